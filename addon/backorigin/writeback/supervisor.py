"""The write-back supervisor: the proxy's side of the write-back worker (writeback.worker).

The proxy spools every mirrored body itself (body, then manifest: the promise to store it) and
the worker process uploads it, so boto3's CPU is spent outside the proxy's process and GIL. The
spool stays the only queue: a worker resumes whatever the spool holds when it starts, so a crash
of either process loses nothing. Running the process is writeback.process's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from cachetools import TTLCache

from backorigin.s3.addressing import ObjectKey
from backorigin.writeback.process import WorkerProcess
from backorigin.writeback.spool import ObjectUpload, Spool, WriteBackOutcome
from backorigin.writeback.writebacksettings import WriteBackSettings

logger = logging.getLogger(__name__)

STORED_KEPT, STORED_FOR = 10_000, 600.0  # write-backs stored, remembered for the deletes on their way meanwhile

class WriteBackSupervisor:
    """The proxy's side: spools write-backs, runs the worker process (starts it, starts another
    when it dies, drains it at shutdown), hands it each write-back and hears how it ended
    (`landed`, on the event loop, once a write-back has ended for good)."""

    def __init__(
        self, spool_dir: Path | None = None, workers: int = WriteBackSettings.workers,
        max_pending: int = WriteBackSettings.max_pending, fsync: bool = False,
        landed: Callable[[ObjectUpload, WriteBackOutcome, str], None] = lambda upload, outcome, detail: None,
    ) -> None:
        """`spool_dir`: the spool, or None until `open` (the proxy's spool is known at its first configure)."""
        self._spool = Spool(spool_dir, fsync) if spool_dir is not None else None
        self.workers = workers
        self.max_pending = max_pending
        self.landed = landed
        self.outcomes: Counter[str] = Counter()
        # the worker's other arguments (backorigin_s3_endpoint, tombstones), set by the addon
        self.endpoint: str | None = None
        self.tombstones: tuple[str | None, str | None] | None = None  # when deletes stick: (where, the store)
        self._pending: dict[Path, tuple[ObjectUpload, asyncio.Future[WriteBackOutcome]]] = {}
        self._by_object: dict[ObjectKey, set[Path]] = {}  # the manifests of _pending, by object: O(1) per key
        self._deferred: set[Path] = set()
        self._held: Counter[ObjectKey] = Counter()  # deletes on their way to the store, by object
        # when write-backs were last heard stored, by object (a delete on its way may have come first)
        self._stored: TTLCache[ObjectKey, float] = TTLCache(STORED_KEPT, STORED_FOR)
        # every worker that starts is sent each pending write-back, held or not (it answers "gone"
        # for one an earlier worker finished without a word); a withdrawal waits for it (kept)
        self.process = WorkerProcess("write-back worker", self.command, lambda: [
            self._upload_line(manifest, upload) for manifest, (upload, _) in self._pending.items()], self._heard)

    def open(self, spool_dir: Path, fsync: bool = False) -> None:
        self._spool = Spool(spool_dir, fsync)

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            raise RuntimeError("the write-back spool is opened at the first configure (miss.mirroring)")
        return self._spool

    @property
    def pending(self) -> int:
        return len(self._pending)

    def has_room(self) -> bool:
        """Whether one more write-back may be spooled; past `max_pending` a miss is answered
        but not stored (the object is simply mirrored again on its next miss)."""
        if self.pending < self.max_pending:
            return True
        self.outcomes["dropped"] += 1
        return False

    def submit(self, upload: ObjectUpload, source: Path) -> Path:
        """Spool now (on the caller's thread, so the promise is on disk when this returns),
        then have the worker store it (once released, while a delete of it is on its way);
        returns the manifest."""
        manifest = self.spool.add(upload, source)
        self._track(manifest, upload)
        self.process.send(self._upload_line(manifest, upload))
        return manifest

    def hold(self, key: ObjectKey) -> None:
        """A delete of the object is on its way to the store: its write-backs do not start until
        `release` (the store refused it) or `withdraw` (it succeeded). One already uploading goes on."""
        self._held[key] += 1
        if self._held[key] == 1:
            self._send_each(key, "hold")

    def release(self, key: ObjectKey) -> None:
        if self._held[key] > 1:
            self._held[key] -= 1
            return
        del self._held[key]
        self._send_each(key, "release")

    def withdraw(self, key: ObjectKey, since: float = 0.0) -> Awaitable[bool]:
        """The object was deleted (by a delete sent at `since`, a time.time()): none of its
        write-backs may land. The worker is told now, before the caller answers its client; the
        result is done once the worker has unspooled each one that had not started, or finished
        uploading it (a caller that must not wait awaits it in the background); True when one was
        stored since (then the proxy deletes the object again)."""
        waiting = []
        for manifest in list(self._by_object.get(key, ())):
            self.process.send({"withdraw": str(manifest)}, keep=True)
            waiting.append(self._pending[manifest][1])
        return self._withdrawn(key, since, waiting)

    async def _withdrawn(self, key: ObjectKey, since: float, waiting: list[asyncio.Future[WriteBackOutcome]]) -> bool:
        await asyncio.gather(*(asyncio.shield(ended) for ended in waiting))
        return any(ended.result() == "stored" for ended in waiting) or self._stored.get(key, 0.0) >= since

    def _send_each(self, key: ObjectKey, verb: str) -> None:
        for manifest in self._by_object.get(key, ()):
            self.process.send({verb: str(manifest)})

    def _upload_line(self, manifest: Path, upload: ObjectUpload) -> dict[str, Any]:
        return {"upload": str(manifest), "hold": upload.object_key in self._held}

    def resume(self) -> list[tuple[Path, ObjectUpload]]:
        """What a previous run left spooled (the worker resumes it by itself when it starts)."""
        self.spool.clear_downloads()
        resumed = [(manifest, replace(upload, endpoint=self.endpoint) if self.endpoint else upload)
                   for manifest, upload in self.spool.pending()]
        for manifest, upload in resumed:
            self._track(manifest, upload)
        self.process.start()
        return resumed

    async def drain(self, timeout: float) -> None:
        """Let the worker finish pending uploads for up to `timeout` seconds, then stop it;
        what is left stays spooled."""
        await self.process.drain(timeout)

    def _track(self, manifest: Path, upload: ObjectUpload) -> None:
        self._pending[manifest] = (upload, asyncio.get_running_loop().create_future())
        self._by_object.setdefault(upload.object_key, set()).add(manifest)

    def _untrack(self, manifest: Path) -> tuple[ObjectUpload, asyncio.Future[WriteBackOutcome]] | None:
        tracked = self._pending.pop(manifest, None)
        if tracked is not None:
            manifests = self._by_object[tracked[0].object_key]
            manifests.discard(manifest)
            if not manifests:
                del self._by_object[tracked[0].object_key]
        return tracked

    def command(self) -> list[str]:
        arguments = [sys.executable, "-m", "backorigin.writeback.worker", "--spool", str(self.spool.directory),
                     "--workers", str(self.workers)]
        if self.spool.fsync:
            arguments.append("--fsync")
        if self.endpoint:
            arguments += ["--endpoint", self.endpoint]
        if self.tombstones is not None:
            where, store = self.tombstones
            arguments += ["--deletes-stick", *(["--tombstones", where] if where else []), *(["--store", store] if store else [])]
        return arguments

    def _heard(self, message: dict[str, Any]) -> None:
        manifest, outcome = Path(message["manifest"]), cast(WriteBackOutcome, message["outcome"])
        if outcome == "deferred":
            if manifest not in self._deferred:
                self._deferred.add(manifest)
                self.outcomes["deferred"] += 1
            return
        self._deferred.discard(manifest)
        tracked = self._untrack(manifest)
        if tracked is None:
            return
        upload, ended = tracked
        if outcome == "stored":
            self._stored[upload.object_key] = time.time()
        if outcome != "gone":
            self.outcomes[outcome] += 1
        if not ended.done():
            ended.set_result(outcome)
        self.landed(upload, outcome, message.get("detail", ""))

