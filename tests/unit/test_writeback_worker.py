"""The write-back worker's queue: held write-backs wait, released ones run, withdrawn ones are
unspooled; a hold and a release in the same breath lose nothing. (Uploads are a stand-in here;
tests/e2e/test_writeback_worker.py runs the real worker against the real store.)"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from backorigin.writeback.spool import ObjectUpload
from backorigin.writeback.worker import WriteBack


class Worker:
    def __init__(self, spool: Path) -> None:
        self.reports: list[tuple[str, str]] = []
        self.writeback = WriteBack(spool, workers=1, report=lambda manifest, outcome, detail: self.reports.append((manifest.stem, outcome)))
        self.uploaded: list[str] = []
        self.gate = threading.Event()
        self.started = threading.Event()  # an upload is under way (its thread took it)
        self.writeback._upload = self._upload  # type: ignore[assignment]

    def _upload(self, upload: ObjectUpload, body: Path, wanted) -> str:
        self.started.set()
        self.gate.wait(10)
        self.uploaded.append(upload.key)
        return "stored"

    def spool(self, key: str) -> Path:
        body = self.writeback.spool.new_body_path()
        body.write_bytes(b"x")
        manifest = self.writeback.spool.add(ObjectUpload("http://s", "b", key, {}, {}, 1, "m"), body)
        self.writeback.queue(manifest)
        return manifest

    async def until(self, count: int) -> None:
        for _ in range(500):
            if len(self.reports) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"reports: {self.reports}")


async def test_a_held_write_back_waits_for_its_release(tmp_path):
    worker = Worker(tmp_path / "spool")
    busy = worker.spool("busy")  # the one thread is taken by it until the gate opens
    held = worker.spool("held")
    worker.writeback.hold(held)
    worker.gate.set()
    await worker.until(1)
    assert held in worker.writeback._parked and held not in worker.writeback._pending  # no thread can take it
    assert worker.uploaded == ["busy"] and worker.reports == [(busy.stem, "stored")]
    worker.writeback.release(held)
    await worker.until(2)
    assert worker.uploaded == ["busy", "held"] and worker.reports[1] == (held.stem, "stored")
    await worker.writeback.drain(1)


async def test_a_hold_and_a_release_in_one_breath_lose_nothing(tmp_path):
    """A refused delete answered at once: its hold and release reach the worker back to back."""
    worker = Worker(tmp_path / "spool")
    worker.spool("busy")
    held = worker.spool("held")
    worker.writeback.hold(held)
    worker.writeback.release(held)  # before any callback of the hold ran
    worker.gate.set()
    await worker.until(2)
    assert sorted(worker.uploaded) == ["busy", "held"] and (held.stem, "stored") in worker.reports
    await worker.writeback.drain(1)


async def test_a_held_write_back_that_is_withdrawn_never_runs_and_leaves_the_spool(tmp_path):
    worker = Worker(tmp_path / "spool")
    worker.spool("busy")
    held = worker.spool("held")
    worker.writeback.hold(held)
    await worker.writeback.withdraw(held)
    worker.gate.set()
    await worker.until(2)
    assert worker.uploaded == ["busy"] and (held.stem, "deleted") in worker.reports
    assert not held.exists() and not worker.writeback.spool.body_of(held).exists()
    await worker.writeback.drain(1)


async def test_an_upload_under_way_goes_on_when_held(tmp_path):
    worker = Worker(tmp_path / "spool")
    running = worker.spool("running")
    assert await asyncio.to_thread(worker.started.wait, 10)  # the thread has taken it
    worker.writeback.hold(running)
    worker.gate.set()
    await worker.until(1)
    assert worker.reports == [(running.stem, "stored")]
    await worker.writeback.drain(1)


async def test_a_shutdown_counts_the_deferred_and_held_write_backs_it_leaves_spooled(tmp_path, caplog):
    """The store is unreachable: a write-back that has given up for now (deferred) is no longer
    uploading, yet stays spooled; so does a held one. The shutdown says how many stay."""
    worker = Worker(tmp_path / "spool")

    def unreachable(upload: ObjectUpload, body: Path, wanted) -> str:
        raise ConnectionRefusedError("nothing listens")

    worker.writeback._upload = unreachable  # type: ignore[assignment]
    deferred = worker.spool("deferred")
    await worker.until(1)
    assert worker.reports == [(deferred.stem, "deferred")]
    held = worker.spool("held")
    worker.writeback.hold(held)
    caplog.set_level("WARNING")
    await worker.writeback.drain(0.1)
    assert "2 write-back(s) still pending" in caplog.text
    assert deferred.exists() and held.exists()
