"""The write-through's supervisor in the proxy: what a previous run left journaled counts as
pending from the first configure, before the worker is up (a scrape of
backorigin_writethrough_pending read 0 there, and a test took the journal for applied)."""

from __future__ import annotations

from backorigin.rules.writethrough import OriginCopy
from backorigin.writethrough.journal import Change, Journal
from backorigin.writethrough.supervisor import WriteThroughSupervisor


def test_what_the_journal_holds_is_pending_before_the_worker_starts(tmp_path):
    journal = Journal(tmp_path / "writethrough", fsync=False)
    for number in range(3):
        key = f"k{number}"
        journal.add("PUT", [Change("http://store", "b", key, OriginCopy("http://origin", "b", key, "us-east-1", "KEY"))])
    supervisor = WriteThroughSupervisor(tmp_path / "writethrough", fsync=False)
    supervisor.track_journal()
    assert supervisor.pending == 3 and supervisor.writing(("http://store", "b", "k1"))
    assert not supervisor.process.started
