"""The write-back worker: a process of its own beside the proxy (`python -m backorigin.writeback.worker`,
started by writeback.supervisor) that uploads what the spool holds.

`WriteBack` runs the uploads in a few threads (boto3 is blocking): create-only (writeback.upload),
retried with backoff, deferred while the store is unreachable and retried every 30 s, withdrawn
for a delete, drained at shutdown; an upload the store refuses for good is kept in spool/failed/.
The tombstones are asked right before every attempt, so no write-back recreates a deleted object.

A write-back can be held (a delete of its object is on its way to the store): it does not start
until it is released, or it is withdrawn once the delete succeeded. One already uploading goes on.

It talks to the supervisor in JSON lines:
  supervisor -> worker (stdin):   {"upload": MANIFEST, "hold": BOOL} | {"hold": MANIFEST} | {"release": MANIFEST}
                                  | {"withdraw": MANIFEST} | {"drain": SECONDS}
  worker -> supervisor (stdout):  {"manifest": MANIFEST, "outcome": OUTCOME, "detail": WHY (a refusal)}
and its log lines go to the supervisor on stderr, which logs them in the proxy. The end of stdin
means the proxy is gone: the worker stops, and what it has not stored stays spooled for the
next start.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from backorigin.s3.clients import is_transient, shared_s3_client
from backorigin.tombstones.tombstones import open_tombstones
from backorigin.writeback.process import commands, reply, run
from backorigin.writeback.spool import ObjectUpload, Spool, WriteBackOutcome
from backorigin.writeback.upload import KeyRefused, Unwanted, remove_if_ours, retrying, upload_object
from backorigin.writeback.writebacksettings import WriteBackSettings

logger = logging.getLogger(__name__)

DEFERRED_RETRY_EVERY = 30.0  # seconds between retries of write-backs the store refused for now


class Deleted(Exception):
    """The object was deleted through a proxy: its write-back must not recreate it."""


class WriteBack:
    """Spooled uploads in background threads: retried, resumable, drained at shutdown. The
    write-back worker process runs it (backorigin.writeback.worker); `report` hears how each
    write-back ended, "deferred" (the store is unreachable; it stays spooled) included."""

    def __init__(
        self, spool_dir: Path, workers: int = WriteBackSettings.workers, attempts: int = 8, fsync: bool = False,
        report: Callable[[Path, WriteBackOutcome, str], None] = lambda manifest, outcome, detail: None,
    ) -> None:
        self.spool = Spool(spool_dir, fsync)
        self.report = report  # called on the event loop
        # whether the object was deleted through a proxy (a tombstone): checked in the worker
        # right before each upload, so no write-back recreates a deleted object
        self.deleted: Callable[[ObjectUpload], bool] = lambda upload: False
        self.endpoint: str | None = None  # replaces the store every write-back is headed for
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backorigin-writeback")
        self._pending: dict[Path, tuple[concurrent.futures.Future[WriteBackOutcome], ObjectUpload]] = {}  # by manifest
        self._withdrawn: set[Path] = set()  # cancelled because of a delete
        self._overtaken: set[Path] = set()  # withdrawn while uploading: aborted, or removed once stored
        self._held: set[Path] = set()  # a delete of the object is on its way: they do not start
        self._parked: dict[Path, ObjectUpload] = {}  # held before they started
        self._refusals: dict[Path, str] = {}  # why the store refused these for good
        self._deferred: dict[Path, ObjectUpload] = {}  # store unreachable for now; retried later
        self._deferred_lock = threading.Lock()
        self._stopping = threading.Event()
        self._upload = retrying(attempts, max_wait=10, stopping=self._stopping)(self._upload_once)

    def queue(self, manifest: Path, held: bool = False) -> None:
        """Store the write-back spooled under `manifest`, unless it is already under way (held:
        not before it is released); one no longer in the spool is reported "gone" (it ended in an
        earlier worker)."""
        if held:
            self.hold(manifest)
        with self._deferred_lock:
            known = manifest in self._pending or manifest in self._deferred or manifest in self._parked
        if known:
            return
        try:
            upload = ObjectUpload(**json.loads(manifest.read_text()))
        except FileNotFoundError:
            self.report(manifest, "gone", "")
            return
        self._run(manifest, replace(upload, endpoint=self.endpoint) if self.endpoint else upload)

    def resume(self) -> None:
        """Queue every write-back in the spool (what a previous run left, and anything spooled
        before this worker started). Downloads under way are the proxy's: left alone."""
        resumed = list(self.spool.pending())
        for manifest, _ in resumed:
            self.queue(manifest)
        if resumed:
            logger.info("resuming %d spooled write-back(s) from %s", len(resumed), self.spool.directory)

    def retry_deferred(self) -> int:
        """Queue again the write-backs that gave up while the store was unreachable."""
        with self._deferred_lock:
            deferred, self._deferred = self._deferred, {}
        for manifest, upload in deferred.items():
            self._run(manifest, upload)
        return len(deferred)

    def hold(self, manifest: Path) -> None:
        """Do not start this write-back until it is released (one already uploading goes on)."""
        self._held.add(manifest)
        pending = self._pending.get(manifest)
        if pending is not None and pending[0].cancel():  # it had not started: parked until released or withdrawn
            del self._pending[manifest]
            self._parked[manifest] = pending[1]

    def release(self, manifest: Path) -> None:
        self._held.discard(manifest)
        if (upload := self._parked.pop(manifest, None)) is not None:
            self._run(manifest, upload)

    def _run(self, manifest: Path, upload: ObjectUpload) -> None:
        if manifest in self._held:
            self._parked[manifest] = upload
            return
        future = self._executor.submit(self._store, manifest, upload)
        self._pending[manifest] = (future, upload)
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._finished, manifest, done))

    def _finished(self, manifest: Path, future: concurrent.futures.Future[WriteBackOutcome]) -> None:
        pending = self._pending.get(manifest)
        if pending is not None and pending[0] is future:
            del self._pending[manifest]
        elif future.cancelled():
            return  # parked by hold(): it is reported once withdrawn, or once it ran after its release
        if future.cancelled():  # withdrawn for a delete, or left spooled by a shutdown
            outcome: WriteBackOutcome = "deleted" if manifest in self._withdrawn else "deferred"
            self._withdrawn.discard(manifest)
        else:
            outcome = future.result() if not future.exception() else "failed"
        self.report(manifest, outcome, self._refusals.pop(manifest, ""))

    async def withdraw(self, manifest: Path) -> None:
        """The object was deleted through a proxy: its write-back must not land. One that has not
        started (queued, held or deferred) is cancelled and unspooled; one being uploaded is waited
        for (the proxy deletes the object again if it landed). Every withdrawal is reported."""
        self._held.discard(manifest)
        with self._deferred_lock:
            waiting = self._deferred.pop(manifest, None) or self._parked.pop(manifest, None)
        future = self._pending[manifest][0] if manifest in self._pending else None
        if future is not None and not future.cancel():
            self._overtaken.add(manifest)  # being uploaded: aborted, or removed once stored; reported when it ends
            await asyncio.wrap_future(future)
            return
        if future is not None:
            self._withdrawn.add(manifest)  # reported by _finished, which the loop runs after this
            self.spool.finish(manifest)
            return
        outcome: WriteBackOutcome = "deleted" if waiting is not None or manifest.exists() else "gone"
        self.spool.finish(manifest)
        self.report(manifest, outcome, "")

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for pending uploads; what is left (deferred and held ones
        too) stays spooled."""
        unfinished: set[asyncio.Future[WriteBackOutcome]] = set()
        if self._pending:
            logger.info("waiting up to %gs for %d pending write-back(s)", timeout, len(self._pending))
            _, unfinished = await asyncio.wait([asyncio.wrap_future(f) for f, _ in self._pending.values()], timeout=timeout)
        with self._deferred_lock:
            left = len(unfinished) + len(self._deferred) + len(self._parked)
        if left:
            logger.warning("%d write-back(s) still pending; they stay in %s and resume at the next start",
                           left, self.spool.directory)
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _store(self, manifest: Path, upload: ObjectUpload) -> WriteBackOutcome:
        def wanted() -> bool:
            return manifest not in self._overtaken and not self.deleted(upload)

        try:
            outcome = self._upload(upload, self.spool.body_of(manifest), wanted)
            if outcome == "stored" and not wanted():
                raise Deleted(upload.where)  # the delete came while it was on its way
        except (Deleted, Unwanted):
            # an earlier worker (or this attempt) may have stored it after the delete: it goes again
            removed = self._remove_if_ours(upload)
            logger.info("write-back of %s dropped%s: the object was deleted through a proxy", upload.where,
                        " and the copy it had stored removed" if removed else "")
            self.spool.finish(manifest)
            self._overtaken.discard(manifest)
            return "deleted"
        except KeyRefused as e:
            self.spool.keep_failed(manifest)
            self._refusals[manifest] = str(e)
            logger.warning("write-back of %s refused: %s (kept in %s; served from the origin, not stored)",
                           upload.where, e, self.spool.failed)
            return "refused"
        except Exception as e:  # any failure is logged and kept, never raised into the loop
            return self._failed(manifest, upload, e)
        self.spool.finish(manifest)
        if outcome == "exists":
            logger.info("write-back skipped, %s already exists", upload.where)
        else:
            logger.info("write-back stored %s (%d bytes)", upload.where, upload.size)
        return outcome

    def _failed(self, manifest: Path, upload: ObjectUpload, error: Exception) -> WriteBackOutcome:
        if is_transient(error):  # the store is down or overloaded: keep it spooled, try later
            with self._deferred_lock:
                self._deferred[manifest] = upload
            logger.warning("write-back of %s deferred: %s: %s; it stays spooled", upload.where, type(error).__name__, error)
            return "deferred"
        self.spool.keep_failed(manifest)
        self._refusals[manifest] = f"{type(error).__name__}: {error}"
        logger.error("write-back of %s failed: %s: %s (kept in %s)", upload.where, type(error).__name__, error, self.spool.failed)
        return "failed"

    def _upload_once(self, upload: ObjectUpload, body_path: Path, wanted: Callable[[], bool]) -> WriteBackOutcome:
        if not wanted():  # before every attempt: a retried upload may outlive a delete
            raise Deleted(upload.where)
        return upload_object(shared_s3_client(upload.endpoint), upload, body_path, wanted)

    @staticmethod
    def _remove_if_ours(upload: ObjectUpload) -> bool:
        try:
            return remove_if_ours(shared_s3_client(upload.endpoint), upload)
        except Exception as e:
            logger.warning("%s: could not check for a copy stored before its delete: %s", upload.where, e)
            return False


# the process ---------------------------------------------------------------------------------------


def _report(manifest: Path, outcome: WriteBackOutcome, detail: str) -> None:
    reply({"manifest": str(manifest), "outcome": outcome, "detail": detail})


async def serve(arguments: argparse.Namespace) -> None:
    writeback = WriteBack(Path(arguments.spool), arguments.workers, fsync=arguments.fsync, report=_report)
    writeback.endpoint = arguments.endpoint
    if arguments.deletes_stick:
        tombstones = open_tombstones(arguments.tombstones, writeback.spool.directory / "tombstones", arguments.store, fresh=True)
        assert tombstones is not None  # there is a default folder
        writeback.deleted = lambda upload: (upload.bucket, upload.key) in tombstones
    writeback.resume()
    retrying = asyncio.ensure_future(_retry_deferred_forever(writeback))
    withdrawals: set[asyncio.Task[None]] = set()
    drain_within = 0.0  # the addon left without a word (killed): stop at once, the rest stays spooled
    try:
        async for message in commands():
            if "upload" in message:
                writeback.queue(Path(message["upload"]), held=message.get("hold", False))
            elif "hold" in message:
                writeback.hold(Path(message["hold"]))
            elif "release" in message:
                writeback.release(Path(message["release"]))
            elif "withdraw" in message:
                task = asyncio.ensure_future(writeback.withdraw(Path(message["withdraw"])))
                withdrawals.add(task)
                task.add_done_callback(withdrawals.discard)
            elif "drain" in message:
                drain_within = float(message["drain"])
                break
    finally:
        retrying.cancel()
        await writeback.drain(drain_within)


async def _retry_deferred_forever(writeback: WriteBack) -> None:
    while True:
        await asyncio.sleep(DEFERRED_RETRY_EVERY)
        if count := writeback.retry_deferred():
            logger.info("retrying %d deferred write-back(s)", count)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m backorigin.writeback.worker",
                                     description="Upload the write-backs of a backorigin spool (started by the addon).")
    parser.add_argument("--spool", required=True, help="the spool directory")
    parser.add_argument("--workers", type=int, default=WriteBackSettings.workers, help="uploads running at once")
    parser.add_argument("--fsync", action="store_true", help="the spool is kept with fsync")
    parser.add_argument("--endpoint", help="store every write-back here (backorigin_s3_endpoint)")
    parser.add_argument("--deletes-stick", action="store_true", help="never store an object that has a tombstone")
    parser.add_argument("--tombstones", help="where tombstones live (backorigin_tombstones): s3://BUCKET/PREFIX/; "
                        "default the spool's tombstones folder")
    parser.add_argument("--store", help="the store's endpoint, for tombstones kept in it")
    run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
