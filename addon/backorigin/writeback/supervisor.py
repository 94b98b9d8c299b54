"""The write-back supervisor: the proxy's side of the write-back worker (writeback.worker).

The proxy spools every mirrored body itself (body, then manifest: the promise to store it) and
the worker process uploads it, so boto3's CPU is spent outside the proxy's process and GIL. The
spool stays the only queue: a worker resumes whatever the spool holds when it starts, so a crash
of either process loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from backorigin.writeback.spool import ObjectKey, ObjectUpload, Spool, WriteBackOutcome

logger = logging.getLogger(__name__)

RESTART_AFTER = 1.0  # seconds before a worker that died is started again
LOG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
              "CRITICAL": logging.CRITICAL}


class WriteBackSupervisor:
    """The proxy's side: spools write-backs, runs the worker process (starts it, starts another
    when it dies, drains it at shutdown), hands it each write-back and hears how it ended
    (`landed`, on the event loop, once a write-back has ended for good)."""

    def __init__(
        self, spool_dir: Path, workers: int = 4, max_pending: int = 1000, fsync: bool = False,
        landed: Callable[[ObjectUpload, WriteBackOutcome, str], None] = lambda upload, outcome, detail: None,
    ) -> None:
        self.spool = Spool(spool_dir, fsync)
        self.workers = workers
        self.max_pending = max_pending
        self.landed = landed
        self.outcomes: Counter[str] = Counter()
        # the worker's other arguments (backorigin_s3_endpoint, tombstones), set by the addon
        self.endpoint: str | None = None
        self.tombstones: tuple[str | None, str | None] | None = None  # when deletes stick: (where, the store)
        self._pending: dict[Path, tuple[ObjectUpload, asyncio.Future[WriteBackOutcome]]] = {}
        self._deferred: set[Path] = set()
        self._held: Counter[ObjectKey] = Counter()  # deletes on their way to the store, by object
        self._stored_while_held: set[ObjectKey] = set()
        self._process: asyncio.subprocess.Process | None = None
        self._unsent: list[bytes] = []  # withdrawals for a worker that is not up yet
        self._supervisor: asyncio.Task[None] | None = None
        self._up = asyncio.Event()  # a worker process is running
        self._stopping = False

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
        self._send(self._upload_line(manifest, upload))
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
        self._stored_while_held.discard(key)
        self._send_each(key, "release")

    async def withdraw(self, key: ObjectKey) -> bool:
        """The object was deleted: none of its write-backs may land. Returns once the worker has
        unspooled each one that had not started, or finished uploading it; True when one was
        stored while the delete was on its way (then the proxy deletes the object again)."""
        waiting = []
        for manifest, (upload, ended) in list(self._pending.items()):
            if upload.object_key == key:
                self._send({"withdraw": str(manifest)})
                waiting.append(ended)
        await asyncio.gather(*(asyncio.shield(ended) for ended in waiting))
        stored = key in self._stored_while_held or any(ended.result() == "stored" for ended in waiting)
        self._stored_while_held.discard(key)
        return stored

    def _send_each(self, key: ObjectKey, verb: str) -> None:
        for manifest, (upload, _) in self._pending.items():
            if upload.object_key == key:
                self._send({verb: str(manifest)}, keep=False)

    def _upload_line(self, manifest: Path, upload: ObjectUpload) -> dict[str, Any]:
        return {"upload": str(manifest), "hold": upload.object_key in self._held}

    def resume(self) -> list[tuple[Path, ObjectUpload]]:
        """What a previous run left spooled (the worker resumes it by itself when it starts)."""
        self.spool.clear_downloads()
        resumed = [(manifest, replace(upload, endpoint=self.endpoint) if self.endpoint else upload)
                   for manifest, upload in self.spool.pending()]
        for manifest, upload in resumed:
            self._track(manifest, upload)
        self.start()
        return resumed

    async def drain(self, timeout: float) -> None:
        """Let the worker finish pending uploads for up to `timeout` seconds, then stop it;
        what is left stays spooled."""
        self._stopping = True
        supervisor = self._supervisor
        if supervisor is None:
            return
        up = asyncio.ensure_future(self._up.wait())  # a worker being started: drain it too
        await asyncio.wait([up, supervisor], return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        process = self._process
        if process is not None and process.returncode is None and process.stdin is not None:
            self._send({"drain": timeout})
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), timeout + 10)
            except TimeoutError:
                logger.warning("the write-back worker did not stop; killing it (its write-backs stay spooled)")
                process.kill()
        await asyncio.gather(supervisor, return_exceptions=True)

    def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.ensure_future(self._supervise())

    def _track(self, manifest: Path, upload: ObjectUpload) -> None:
        self._pending[manifest] = (upload, asyncio.get_running_loop().create_future())

    def _send(self, message: dict[str, Any], keep: bool = True) -> None:
        """A line for the worker. While none runs, a withdrawal waits for the next one; uploads
        need not (every worker that starts is sent one for each pending write-back, held or not),
        nor holds and releases (`keep` False)."""
        line = json.dumps(message).encode() + b"\n"
        process = self._process
        if process is not None and process.returncode is None and process.stdin is not None:
            process.stdin.write(line)
        elif keep and "upload" not in message:
            self._unsent.append(line)
        self.start()

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

    async def _supervise(self) -> None:
        """Run the worker; start another when it dies (it resumes the spool)."""
        while not self._stopping:
            # a session of its own: the terminal's Ctrl-C, meant for mitmdump, would reach the worker
            # too, even before it can ignore it (while it still imports), and kill it mid-drain; the
            # proxy tells it when to stop, and it stops by itself when the proxy is gone (its input ends)
            self._process = process = await asyncio.create_subprocess_exec(
                *self.command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
            assert process.stdin is not None and process.stdout is not None and process.stderr is not None
            self._up.set()
            relaying = asyncio.ensure_future(_relay_log(process.stderr))
            # everything still pending (the worker ignores what its spool scan found already, and
            # answers "gone" for what an earlier worker finished without a word), then withdrawals
            unsent, self._unsent = self._unsent, []
            uploads = [json.dumps(self._upload_line(manifest, upload)).encode() + b"\n"
                       for manifest, (upload, _) in self._pending.items()]
            process.stdin.writelines([*uploads, *unsent])
            while line := await process.stdout.readline():
                self._heard(json.loads(line))
            await process.wait()
            await relaying
            self._up.clear()
            if not self._stopping:
                logger.warning("the write-back worker exited with status %s; starting another", process.returncode)
                await asyncio.sleep(RESTART_AFTER)

    def _heard(self, message: dict[str, Any]) -> None:
        manifest, outcome = Path(message["manifest"]), cast(WriteBackOutcome, message["outcome"])
        if outcome == "deferred":
            if manifest not in self._deferred:
                self._deferred.add(manifest)
                self.outcomes["deferred"] += 1
            return
        self._deferred.discard(manifest)
        tracked = self._pending.pop(manifest, None)
        if tracked is None:
            return
        upload, ended = tracked
        if outcome == "stored" and upload.object_key in self._held:
            self._stored_while_held.add(upload.object_key)
        if outcome != "gone":
            self.outcomes[outcome] += 1
        if not ended.done():
            ended.set_result(outcome)
        self.landed(upload, outcome, message.get("detail", ""))


def _key_of(upload: ObjectUpload) -> ObjectKey:
    return upload.endpoint, upload.bucket, upload.key


async def _relay_log(stderr: asyncio.StreamReader) -> None:
    """The worker's log lines ("LEVEL message") into the proxy's log, so they show in mitmproxy's
    event log (mitmweb, the console) rather than on the terminal; anything else (a traceback)
    as a warning."""
    while line := await stderr.readline():
        level, _, message = line.decode("utf-8", "replace").rstrip().partition(" ")
        if level in LOG_LEVELS:
            logger.log(LOG_LEVELS[level], "write-back worker: %s", message)
        else:
            logger.warning("write-back worker: %s %s", level, message)
