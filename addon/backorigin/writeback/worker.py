"""The write-back worker: uploads run in a process of their own, beside the proxy.

The addon spools every mirrored body itself (body, then manifest: the promise to store it);
this process uploads what the spool holds (writeback.WriteBack: create-only, retried, in a
few threads) and says how each write-back ended. A miss then costs the proxy only the fetch
and the answer: boto3's CPU is spent outside the proxy's process and GIL. The spool stays
the only queue: a worker resumes whatever the spool holds when it starts, so a crash of
either process loses nothing, and the addon starts a new worker when one dies.

The two talk in JSON lines:
  addon -> worker (stdin):   {"upload": MANIFEST} | {"withdraw": MANIFEST} | {"drain": SECONDS}
  worker -> addon (stdout):  {"manifest": MANIFEST, "outcome": OUTCOME}
and its log lines go to the addon on stderr, which logs them in the proxy. The end of stdin
means the addon is gone: the worker stops, and what it has not stored stays spooled for the
next start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, cast

from backorigin.deletes.tombstones import make_tombstones
from backorigin.writeback.upload import ObjectUpload, Outcome, Spool, WriteBack

logger = logging.getLogger(__name__)

DEFERRED_RETRY_EVERY = 30.0  # seconds between retries of write-backs the store refused for now
RESTART_AFTER = 1.0  # seconds before a worker that died is started again
LOG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
              "CRITICAL": logging.CRITICAL}


class WriteBackWorker:
    """The addon's side: spools write-backs, hands them to the worker process, and hears how
    they ended (`landed`, on the event loop, once a write-back has ended for good)."""

    def __init__(
        self, spool_dir: Path, workers: int = 4, max_pending: int = 1000, fsync: bool = False,
        landed: Callable[[ObjectUpload, Outcome], None] = lambda upload, outcome: None,
    ) -> None:
        self.spool = Spool(spool_dir, fsync)
        self.workers = workers
        self.max_pending = max_pending
        self.landed = landed
        self.outcomes: Counter[str] = Counter()
        # the worker's other arguments (backorigin_s3_endpoint, tombstones), set by the addon
        self.endpoint: str | None = None
        self.tombstones: tuple[str | None, str | None] | None = None  # when deletes stick: (where, the store)
        self._pending: dict[Path, tuple[ObjectUpload, asyncio.Future[Outcome]]] = {}
        self._deferred: set[Path] = set()
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
        then have the worker store it; returns the manifest."""
        manifest = self.spool.add(upload, source)
        self._track(manifest, upload)
        self._send({"upload": str(manifest)})
        return manifest

    def resume(self) -> list[tuple[Path, ObjectUpload]]:
        """What a previous run left spooled (the worker resumes it by itself when it starts)."""
        self.spool.clear_downloads()
        resumed = [(manifest, replace(upload, endpoint=self.endpoint) if self.endpoint else upload)
                   for manifest, upload in self.spool.pending()]
        for manifest, upload in resumed:
            self._track(manifest, upload)
        self.start()
        return resumed

    async def withdraw(self, manifest: Path) -> None:
        """A delete of the object is on its way to the store: its write-back must not land
        after it. Returns once the worker has unspooled it, or finished uploading it."""
        tracked = self._pending.get(manifest)
        if tracked is None:
            return
        self._send({"withdraw": str(manifest)})
        await asyncio.shield(tracked[1])

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

    def _send(self, message: dict[str, Any]) -> None:
        """A line for the worker. While none runs, a withdrawal waits for the next one; an
        upload need not: every worker that starts is sent one for each pending write-back."""
        line = json.dumps(message).encode() + b"\n"
        process = self._process
        if process is not None and process.returncode is None and process.stdin is not None:
            process.stdin.write(line)
        elif "upload" not in message:
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
            self._process = process = await asyncio.create_subprocess_exec(
                *self.command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert process.stdin is not None and process.stdout is not None and process.stderr is not None
            self._up.set()
            relaying = asyncio.ensure_future(_relay_log(process.stderr))
            # everything still pending (the worker ignores what its spool scan found already, and
            # answers "gone" for what an earlier worker finished without a word), then withdrawals
            unsent, self._unsent = self._unsent, []
            process.stdin.writelines([*(json.dumps({"upload": str(m)}).encode() + b"\n" for m in self._pending), *unsent])
            while line := await process.stdout.readline():
                self._heard(json.loads(line))
            await process.wait()
            await relaying
            self._up.clear()
            if not self._stopping:
                logger.warning("the write-back worker exited with status %s; starting another", process.returncode)
                await asyncio.sleep(RESTART_AFTER)

    def _heard(self, message: dict[str, Any]) -> None:
        manifest, outcome = Path(message["manifest"]), cast(Outcome, message["outcome"])
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
        if outcome != "gone":
            self.outcomes[outcome] += 1
        if not ended.done():
            ended.set_result(outcome)
        self.landed(upload, outcome)


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


# the worker process ------------------------------------------------------------------------------


def _reporter(out: Any) -> Callable[[Path, Outcome], None]:
    def report(manifest: Path, outcome: Outcome) -> None:
        out.write(json.dumps({"manifest": str(manifest), "outcome": outcome}) + "\n")
        out.flush()
    return report


async def serve(arguments: argparse.Namespace) -> None:
    writeback = WriteBack(Path(arguments.spool), arguments.workers, fsync=arguments.fsync, report=_reporter(sys.stdout))
    writeback.endpoint = arguments.endpoint
    if arguments.deletes_stick:
        tombstones = make_tombstones(arguments.tombstones, writeback.spool.directory, arguments.store, fresh=True)
        writeback.deleted = lambda upload: (upload.bucket, upload.key) in tombstones
    writeback.resume()
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    retrying = asyncio.ensure_future(_retry_deferred_forever(writeback))
    withdrawals: set[asyncio.Task[None]] = set()
    drain_within = 0.0  # the addon left without a word (killed): stop at once, the rest stays spooled
    try:
        while line := await commands.readline():
            message = json.loads(line)
            if "upload" in message:
                writeback.queue(Path(message["upload"]))
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
    parser.add_argument("--workers", type=int, default=4, help="uploads running at once")
    parser.add_argument("--fsync", action="store_true", help="the spool is kept with fsync")
    parser.add_argument("--endpoint", help="store every write-back here (backorigin_s3_endpoint)")
    parser.add_argument("--deletes-stick", action="store_true", help="never store an object that has a tombstone")
    parser.add_argument("--tombstones", help="where tombstones live (backorigin_tombstones): s3://BUCKET/PREFIX/; "
                        "default the spool's tombstones folder")
    parser.add_argument("--store", help="the store's endpoint, for tombstones kept in it")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")  # see _relay_log
    for library in ("botocore", "boto3", "urllib3"):
        logging.getLogger(library).setLevel(logging.WARNING)
    # Ctrl-C in mitmdump's terminal reaches this process too: the addon decides when it stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(serve(arguments))
    # An upload still under way would hold the interpreter's exit until it ends (its thread is
    # joined); its write-back is still spooled and resumes at the next start, so leave now.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
