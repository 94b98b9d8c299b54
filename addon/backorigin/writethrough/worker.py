"""The write-through worker: a process of its own (as the write-back worker, and for the same
reason: boto3's CPU stays out of the proxy's process and GIL) that applies the journal's entries
to the origins, started, restarted and drained by the proxy (writethrough.supervisor).

Each key is synced by one thread at a time (writethrough.backlog), a journal by one worker at a
time (an flock), its origin copy made what the store holds now (writethrough.sync); an entry is
removed from the journal once every key it names has been synced after it was written. Failures
wait and are tried again, without end: a failing origin bucket is paused as a whole (exponential
backoff up to 10 s), a key the origin refuses alone waits alone (up to 300 s). The MirrorAuth secrets come
from the proxy on stdin, never from a file.

  supervisor -> worker (stdin):   {"credentials": [[ENDPOINT, ACCESS_KEY_ID, SECRET], ...]}
                                  | {"entry": PATH} | {"drain": SECONDS}
  worker -> supervisor (stdout):  {"synced": [STORE, BUCKET, KEY], "entries": [PATH, ...], "action": ACTION}
                                  | {"retrying": [STORE, BUCKET, KEY], "scope": "lane"|"key", "why": TEXT, "after": SECONDS}
                                  | {"gone": PATH}  (an entry an earlier worker applied)
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import botocore.exceptions

from backorigin.s3.clients import code_of, describe_error, foreign_s3_client, shared_s3_client, status_of
from backorigin.writeback.process import commands, reply, run
from backorigin.writethrough.backlog import Backlog, Scope
from backorigin.writethrough.journal import Change, Journal
from backorigin.writethrough.sync import Action, sync
from backorigin.writethrough.writethroughsettings import WriteThroughSettings

logger = logging.getLogger(__name__)

# what a refusal names that is about the origin bucket (or the store) as a whole, not about one key
WHOLE_SIDE_CODES = frozenset({"NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"})


class NoCredentials(Exception):
    """The rules in force name no MirrorAuth secret for an entry's origin and key id."""


def scope_of(error: BaseException) -> Scope:
    """Whether a failure is about the origin bucket (or the store) as a whole, down, slow, refusing
    every request of this signature or to this bucket, or this machine's disk full; or about the key alone."""
    if isinstance(error, botocore.exceptions.ClientError):
        status = status_of(error)
        return "lane" if status >= 500 or status in (401, 403, 409, 429) or code_of(error) in WHOLE_SIDE_CODES else "key"
    if isinstance(error, (botocore.exceptions.BotoCoreError, OSError, NoCredentials)):
        return "lane"
    return "key"  # it kept changing, or its copy did not add up


class Applier:
    """The journal's entries applied by `workers` threads (see the module's docstring)."""

    def __init__(self, journal: Journal, workers: int) -> None:
        self.journal = journal
        self.backlog = Backlog()
        self.workers = workers
        self.secrets: dict[tuple[str, str], str] = {}  # by origin endpoint and AccessKeyId
        self._origins: dict[tuple[str, str, str], Any] = {}  # boto3 clients by endpoint, AccessKeyId and region
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backorigin-writethrough")
        self._running: set[Future[tuple[Action, int]]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def credentials(self, secrets: list[list[str]]) -> None:
        self.secrets = {(endpoint, key_id): secret for endpoint, key_id, secret in secrets}
        self._origins.clear()
        self._wake.set()

    def add(self, path: Path) -> None:
        if path in self.backlog:
            return
        try:
            entry = self.journal.read(path)
        except FileNotFoundError:
            reply({"gone": str(path)})
            return
        self.backlog.add(entry)
        self._wake.set()

    async def run(self) -> None:
        """Start syncs while there are threads free and keys to sync; sleep until one ends, an
        entry arrives or a wait ends."""
        while not self._stopping:
            now = time.monotonic()
            while len(self._running) < self.workers and (taken := self.backlog.take(now)) is not None:
                self._start(*taken)
            self._wake.clear()
            later = self.backlog.next_time()
            try:
                await asyncio.wait_for(self._wake.wait(), None if later is None else max(later - now, 0.01))
            except TimeoutError:
                pass

    async def drain(self, timeout: float) -> None:
        """Start nothing more; wait up to `timeout` seconds for the syncs under way."""
        self._stopping = True
        self._wake.set()
        if self._running:
            logger.info("waiting up to %gs for %d write-through sync(s)", timeout, len(self._running))
            await asyncio.wait([asyncio.wrap_future(future) for future in self._running], timeout=timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, change: Change, taken: list[Path]) -> None:
        loop = asyncio.get_running_loop()
        try:  # clients are made here, on one thread: making boto3 clients is not thread-safe
            store, origin = shared_s3_client(change.store), self._origin_client(change)
        except NoCredentials as e:
            self._failed(change, taken, e)
            return
        future = self._executor.submit(sync, change, store, origin, self.journal, lambda: self.backlog.arrived(change))
        self._running.add(future)
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._ended, change, taken, done))

    def _origin_client(self, change: Change) -> Any:
        endpoint, key_id, region = change.origin.endpoint, change.origin.access_key_id, change.origin.region
        if (endpoint, key_id, region) not in self._origins:
            if (endpoint, key_id) not in self.secrets:
                raise NoCredentials(f"the rules in force have no MirrorAuth with AccessKeyId {key_id} for {endpoint}")
            secret = self.secrets[endpoint, key_id]
            self._origins[endpoint, key_id, region] = foreign_s3_client(endpoint, region, (key_id, secret), attempts=1)
        return self._origins[endpoint, key_id, region]

    def _ended(self, change: Change, taken: list[Path], future: Future[tuple[Action, int]]) -> None:
        self._running.discard(future)
        self._wake.set()
        if future.cancelled():  # a drain gave up on it: its entries stay in the journal
            return
        error = future.exception()
        if error is not None:
            self._failed(change, taken, error)
            return
        action, also = future.result()
        applied, done = self.backlog.applied(change, taken, also)
        for path in done:
            path.unlink(missing_ok=True)
        if action != "unchanged":
            logger.info("write-through %s %s -> %s", action, change.where, change.origin.where)
        reply({"synced": list(change.object_key), "entries": [str(path) for path in applied], "action": action})

    def _failed(self, change: Change, taken: list[Path], error: BaseException) -> None:
        scope = scope_of(error)
        after = self.backlog.failed(change, taken, time.monotonic(), scope)
        why = describe_error(error)
        held = f"its origin bucket {change.origin.bucket} is paused" if scope == "lane" else "it waits"
        logger.warning("write-through of %s to %s: %s; %s, tried again in %.1fs", change.where, change.origin.where, why,
                       held, after)
        reply({"retrying": list(change.object_key), "scope": scope, "why": why, "after": round(after, 3)})


async def serve(arguments: argparse.Namespace) -> None:
    journal = Journal(Path(arguments.journal), fsync=False)
    # one worker per journal: a worker of a proxy that was just killed may not be gone yet (it
    # leaves when its input ends), and two workers would copy one key at once
    claim = os.open(journal.directory / "worker.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    await asyncio.to_thread(fcntl.flock, claim, fcntl.LOCK_EX)
    journal.clear_downloads()
    applier = Applier(journal, arguments.workers)
    running = asyncio.ensure_future(applier.run())
    drain_within = 0.0  # the proxy left without a word (killed): stop at once, the rest stays journaled
    try:
        async for message in commands():
            if "credentials" in message:
                applier.credentials(message["credentials"])
            elif "entry" in message:
                applier.add(Path(message["entry"]))
            elif "drain" in message:
                drain_within = float(message["drain"])
                break
    finally:
        await applier.drain(drain_within)
        running.cancel()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m backorigin.writethrough.worker",
                                     description="Apply a backorigin write-through journal to the origins (started by the addon).")
    parser.add_argument("--journal", required=True, help="the journal directory")
    parser.add_argument("--workers", type=int, default=WriteThroughSettings.workers, help="keys synced at once")
    run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
