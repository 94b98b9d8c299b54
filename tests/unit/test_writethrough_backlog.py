"""The write-through worker's queue (writethrough.backlog) and the journal it is fed from: one
sync per key at a time, every entry for a key applied by one sync, an entry gone only once all
its keys are applied, a failing origin paused as a whole and a refused key waiting alone, and
nothing ever dropped. (tests/e2e/test_writethrough.py runs the worker against real stores.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from backorigin.rules.writethrough import OriginCopy
from backorigin.writethrough.backlog import KEY_WAIT_MAX, LANE_WAIT_MAX, Backlog, backoff
from backorigin.writethrough.journal import Change, Entry, Journal
from backorigin.writethrough.sync import KeptChanging
from backorigin.writethrough.worker import NoCredentials, scope_of


def change(key: str, origin: str = "http://old", bucket: str = "ob") -> Change:
    return Change("http://store", bucket, key, OriginCopy(origin, bucket, key, "us-east-1", "KEY"))


def entry(name: str, *changes: Change) -> Entry:
    return Entry(Path(name), 0.0, "create", changes)


def test_one_sync_per_key_and_later_entries_wait_for_it():
    backlog = Backlog()
    a, b = change("a"), change("b")
    backlog.add(entry("1", a))
    backlog.add(entry("2", b))
    backlog.add(entry("3", a))
    assert backlog.take(0) == (a, [Path("1"), Path("3")])  # written twice: one sync of its latest state
    assert backlog.take(0) == (b, [Path("2")])
    backlog.add(entry("4", a))  # written while its sync is under way
    assert backlog.arrived(a) == 1
    assert backlog.take(0) is None  # not a second sync of it at once
    assert backlog.applied(a, [Path("1"), Path("3")]) == ([Path("1"), Path("3")], [Path("1"), Path("3")])
    assert backlog.take(0) == (a, [Path("4")])  # then the later write


def test_entries_that_arrived_before_the_store_was_read_are_applied_by_that_copy():
    backlog = Backlog()
    a = change("a")
    backlog.add(entry("1", a))
    taken = backlog.take(0)
    assert taken is not None
    backlog.add(entry("2", a))  # arrived before the sync read the store (it counted 1)
    backlog.add(entry("3", a))  # arrived after
    assert backlog.applied(*taken, also=1) == ([Path("1"), Path("2")], [Path("1"), Path("2")])
    assert backlog.take(0) == (a, [Path("3")])
    assert backlog.applied(a, [Path("3")], also=0) == ([Path("3")], [Path("3")])
    assert backlog.entries == 0 and backlog.take(0) is None


def test_an_entry_is_done_once_every_key_it_names_is_applied():
    backlog = Backlog()
    a, b = change("a"), change("b")
    backlog.add(entry("many", a, b, a))  # a DeleteObjects naming a twice
    backlog.add(entry("many", a, b))  # told twice (a worker greeted after a restart): known
    assert backlog.entries == 1
    first, second = backlog.take(0), backlog.take(0)
    assert first is not None and second is not None
    assert backlog.applied(*first)[1] == []
    assert backlog.applied(*second)[1] == [Path("many")]
    assert backlog.entries == 0


def test_a_failing_origin_is_paused_as_a_whole_and_its_first_key_stays_first():
    backlog = Backlog()
    a, b, elsewhere = change("a"), change("b"), change("c", "http://other")
    for name, key in (("1", a), ("2", b), ("3", elsewhere)):
        backlog.add(entry(name, key))
    taken = backlog.take(0)
    assert taken == (a, [Path("1")])
    delay = backlog.failed(*taken, now=0, scope="lane")
    assert 0.5 <= delay <= 1.0
    assert backlog.take(0) == (elsewhere, [Path("3")])  # another origin goes on
    assert backlog.take(0) is None and backlog.next_time() == delay
    assert backlog.take(delay) == (a, [Path("1")])  # then in order again
    assert backlog.entries == 3  # nothing dropped


def test_a_bucket_the_origin_refuses_holds_up_no_other_bucket_of_the_same_origin():
    """A pattern entry writes many buckets to one origin endpoint: NoSuchBucket for one (its
    namesake not made yet) pauses that bucket's lane only."""
    backlog = Backlog()
    missing, other = change("a", bucket="tenant-missing"), change("b", bucket="tenant-b")
    backlog.add(entry("1", missing))
    backlog.add(entry("2", other))
    taken = backlog.take(0)
    assert taken == (missing, [Path("1")])
    backlog.failed(*taken, now=0, scope="lane")
    assert backlog.take(0) == (other, [Path("2")])


def test_buckets_take_turns_whatever_each_ones_backlog():
    backlog = Backlog()
    for n in range(100):
        backlog.add(entry(f"a{n:03d}", change(f"k{n}", bucket="tenant-a")))
    backlog.add(entry("b", change("k", bucket="tenant-b")))
    backlog.add(entry("c", change("k", bucket="tenant-c")))
    taken = [backlog.take(0) for _ in range(4)]
    assert [t[0].bucket for t in taken if t] == ["tenant-a", "tenant-b", "tenant-c", "tenant-a"]


def test_a_key_refused_alone_waits_alone():
    backlog = Backlog()
    a, b = change("a"), change("b")
    backlog.add(entry("1", a))
    backlog.add(entry("2", b))
    taken = backlog.take(0)
    assert taken is not None
    delay = backlog.failed(*taken, now=0, scope="key")
    backlog.add(entry("3", a))  # written again while it waits: still waits
    assert backlog.take(0) == (b, [Path("2")])
    assert backlog.take(0) is None
    assert backlog.take(delay) == (a, [Path("1"), Path("3")])


def test_backoff_grows_to_its_ceiling_with_jitter():
    assert all(0.5 <= backoff(1, LANE_WAIT_MAX) <= 1 for _ in range(100))
    assert all(LANE_WAIT_MAX / 2 <= backoff(20, LANE_WAIT_MAX) <= LANE_WAIT_MAX for _ in range(100))
    assert backoff(12, KEY_WAIT_MAX) <= KEY_WAIT_MAX


def test_the_journal_keeps_entries_in_the_order_of_the_writes_without_secrets(tmp_path):
    journal = Journal(tmp_path / "journal")
    written = [journal.add("create", [change(f"k{n}")]) for n in range(5)]
    assert [e.path for e in journal.entries()] == [e.path for e in written]
    assert list(journal.entries())[2] == written[2]
    assert "KEY" in written[0].path.read_text() and oct(os.stat(written[0].path).st_mode & 0o777) == "0o600"
    assert set(json.loads(written[0].path.read_text())["changes"][0]["origin"]) == {
        "endpoint", "bucket", "key", "region", "access_key_id"}  # no secret: the rules hold it


def test_a_journal_entry_that_cannot_be_written_promises_nothing(tmp_path, monkeypatch):
    """An I/O error (a full disk) while an entry is synced: no entry and no partial file is left."""
    journal = Journal(tmp_path / "journal")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        journal.add("create", [change("k")])
    assert [path.name for path in journal.directory.iterdir()] == ["downloads"]


@pytest.mark.parametrize(("error", "scope"), [
    (ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"), "lane"),
    (ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject"), "lane"),
    (ClientError({"Error": {"Code": "NoSuchBucket"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "PutObject"), "lane"),
    (ClientError({"Error": {"Code": "InvalidArgument"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject"), "key"),
    (EndpointConnectionError(endpoint_url="http://old"), "lane"),
    (OSError(28, "No space left on device"), "lane"),
    (NoCredentials("no MirrorAuth"), "lane"),
    (KeptChanging("k"), "key"),
    (ValueError("the store holds 3 bytes, 4 were sent"), "key"),
])
def test_what_a_failure_pauses(error, scope):
    """The origin as a whole (down, refusing the signature, no such bucket, this machine's disk),
    or the key alone."""
    assert scope_of(error) == scope
