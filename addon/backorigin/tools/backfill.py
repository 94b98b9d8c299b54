"""`backorigin backfill`: the final sweep of a migration, without mitmproxy.

Every key of a source (a key list, the miss ledger, or a listing of an S3 origin) that the
store still lacks is fetched from the origin and stored, exactly as a GET through the proxy
would have done it: the bucket's first matching rule (RuleBook.decide_after_store with the
store's 404), its URL, headers, key rewriting, secondary origin and integrity checks
(origin.build_request, OriginClient.fetch), the same metadata (objectmeta.user_metadata), and a
create-only upload (writeback's PutObject arguments and upload_in_parts), so an object that
appears meanwhile is never overwritten. Keys with a tombstone are skipped.

Bodies go to a temporary file in the state folder as they arrive, and from there to the store
(one PUT or parts, as integrity.part_layout says), so memory stays bounded at any size.

The state folder keeps a journal: one JSON line per finished key, written as soon as the key
is finished. A run reads it first and skips every key it names (except failed ones, which are
tried again), so after Ctrl-C or kill -9 the same command continues where the last one
stopped: only the keys that were in flight are fetched again.

`--max-rps` paces every request sent to an origin (redirects, the secondary origin and probes
included) and `--max-bandwidth` the bytes read from origins, both with a token bucket (the
origin client's Pacing: OriginPacing).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, TextIO

import botocore.exceptions

from backorigin.miss import objectmeta
from backorigin.miss.origin import OriginClient, Timeouts
from backorigin.rules.model import RuleBook
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.clients import describe_error, make_s3_client, store_has
from backorigin.tombstones.tombstones import Tombstones, is_tombstoned
from backorigin.tools.report import Finished, Report
from backorigin.tools.shards import Shard
from backorigin.tools.sweep import Progress, SweepError, plan_key, prepare, run_and_report, sweep
from backorigin.ui.metrics import BackfillCollector, Metrics
from backorigin.writeback.upload import KeyRefused, retrying, upload_object

logger = logging.getLogger(__name__)

DEFAULT_STATE = Path(".backfill")
JOURNAL = "journal.jsonl"
DOWNLOADS = "downloads"
FSYNC_EVERY = 1.0  # seconds between fsyncs of the journal (each line reaches the OS at once)

# rates -------------------------------------------------------------------------------------


def parse_rate(text: str) -> int:
    """Bytes per second as text: "1048576", "512k", "50m", "1g" (binary multiples, /s optional)."""
    from backorigin.options import parse_size

    try:
        value = parse_size("--max-bandwidth", text.removesuffix("/s"))
    except Exception as e:  # mitmproxy's OptionsError: report it as an argument error
        raise ValueError(str(e)) from None
    if value <= 0:
        raise ValueError(f"--max-bandwidth: {text!r} must be more than 0")
    return value


class Pacer:
    """A token bucket that holds no burst: each `take(n)` reserves the next n/rate seconds
    of the budget and sleeps until its slot starts, so over any stretch the rate holds to
    within one request (or one chunk)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("a rate must be more than 0")
        self.rate = rate
        self._clock = clock
        self._next = 0.0

    def reserve(self, amount: float) -> float:
        """Seconds to wait before `amount` may be spent (the amount is spent by then)."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + amount / self.rate
        return start - now

    async def take(self, amount: float = 1.0) -> None:
        delay = self.reserve(amount)
        if delay > 0:
            await asyncio.sleep(delay)


class OriginPacing:
    """The origin client's pacing (origin.Pacing): a request pacer (--max-rps) and a byte pacer
    (--max-bandwidth)."""

    def __init__(self, requests: Pacer | None, body_bytes: Pacer | None) -> None:
        self.requests = requests
        self.body_bytes = body_bytes

    async def request(self) -> None:
        if self.requests is not None:
            await self.requests.take()

    async def body(self, size: int) -> None:
        if self.body_bytes is not None:
            await self.body_bytes.take(size)


# one key -------------------------------------------------------------------------------------


class FileSink:
    """origin.BodySink into a file: a 200 body goes to disk chunk by chunk."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None]) -> None:
        self.path = path
        self._on_bytes = on_bytes
        self._fd: int | None = None
        self._began = False
        self.written = 0
        self.announced_at = ""

    @property
    def started(self) -> bool:
        return self._began

    def begin(self, status: int, headers: tuple[tuple[str, str], ...], url: str, etag: str | None) -> None:
        self._began = True
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.announced_at = formatdate(usegmt=True)

    def write(self, chunk: bytes) -> None:
        assert self._fd is not None
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view):]
        self.written += len(chunk)
        self._on_bytes(len(chunk))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


store_object = retrying(4, max_wait=5)(upload_object)  # transient store errors retried, as the write-back does


# the journal -------------------------------------------------------------------------------


class Journal:
    """STATE/journal.jsonl: one line per finished key, appended and flushed at once (so it
    survives kill -9), fsynced at most once a second. The last line of a killed run may be
    cut short; it is ignored."""

    def __init__(self, directory: Path, bucket: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(directory / "lock", "w")
        try:  # two sweeps sharing a state folder would delete each other's downloads
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SweepError(f"another backfill is using {directory}; give this one its own --state") from None
        self.path = directory / JOURNAL
        self.bucket = bucket
        self.earlier: dict[str, Finished] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line a kill cut short: its key counts as not finished
                    if entry.get("bucket") == bucket:
                        self.earlier[entry["key"]] = Finished(entry["key"], entry["result"], entry.get("reason", ""),
                                                              entry.get("bytes", 0))
        self._out: TextIO = open(self.path, "a", encoding="utf-8")
        self._synced = time.monotonic()

    def done(self, key: str) -> Finished | None:
        """An earlier run's result for the key, unless it failed (then it is tried again)."""
        found = self.earlier.get(key)
        return found if found is not None and found.result != "failed" else None

    def record(self, finished: Finished) -> None:
        self._out.write(finished.line(self.bucket) + "\n")
        self._out.flush()
        if time.monotonic() - self._synced > FSYNC_EVERY:
            os.fsync(self._out.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        self._lock.close()


# the sweep -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    book: RuleBook
    store: str
    bucket: str
    state: Path
    concurrency: int = 8
    max_rps: float | None = None
    max_bandwidth: int | None = None
    tombstones: Tombstones | None = None
    # a stalled origin is caught by the read timeout; a whole body may take long under --max-bandwidth
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=10, read=60, total=86400, copy=86400))
    # --origin-listing: the keys a listing of the store had at the start; the store is not asked
    # key by key (a key stored since then is found by the create-only upload). None: ask it.
    in_store: frozenset[str] | None = None


class Backfill:
    def __init__(self, settings: Settings, progress: Progress, journal: Journal, report: Report) -> None:
        self.settings = settings
        self.progress = progress
        self.journal = journal
        self.report = report
        self.downloads = settings.state / DOWNLOADS
        self.downloads.mkdir(parents=True, exist_ok=True)
        for leftover in self.downloads.iterdir():  # bodies of keys in flight at a kill: fetched again
            leftover.unlink(missing_ok=True)
        self.pacing = OriginPacing(Pacer(settings.max_rps) if settings.max_rps else None,
                                   Pacer(settings.max_bandwidth) if settings.max_bandwidth else None)
        self.origin = OriginClient(settings.timeouts, self.pacing)
        self._serial = 0

    async def run(self, keys: Iterable[str]) -> None:
        try:
            await sweep(keys, self.settings.store, self.settings.concurrency, self.progress, self._one)
        finally:
            await self.origin.aclose()

    async def _one(self, store: Any, key: str) -> None:
        try:
            finished = await self.copy(store, key)
        except Exception as e:  # one key's fault never stops the sweep
            logger.exception("%s: unexpected error", key)
            finished = Finished(key, "failed", describe_error(e))
        self.journal.record(finished)
        self.report.add(finished)
        self.progress.finished()
        if finished.result == "failed":
            logger.warning("%s: failed: %s", key, finished.reason)

    async def stored(self, store: Any, key: str) -> bool:
        """Whether the store has the key: the store's listing says, or else a HEAD."""
        if self.settings.in_store is not None:
            return key in self.settings.in_store
        return await asyncio.to_thread(store_has, store, self.settings.bucket, key)

    async def copy(self, store: Any, key: str) -> Finished:
        s = self.settings
        try:
            if await self.stored(store, key):
                return Finished(key, "already-present")
            planned = await plan_key(s.book, s.store, s.bucket, key, s.tombstones)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            return Finished(key, "failed", describe_error(e))
        if planned.result:
            return Finished(key, planned.result, planned.why)
        rule, origin = planned.plan.rule, planned.plan.origin
        assert rule is not None and origin is not None
        self._serial += 1
        path = self.downloads / f"{os.getpid()}-{self._serial}.body"
        sink = FileSink(path, self.progress.add_bytes)
        try:
            try:
                result = await self.origin.fetch(origin, sink)
            finally:
                sink.close()
            if result.status == 404:
                return Finished(key, "origin-404", f"{result.url} answered 404")
            if not result.ok or not sink.started:
                why = result.why
                return Finished(key, "failed", f"{result.url}: {why}")
            if result.not_storable:
                return Finished(key, "failed", f"{result.url}: not stored: {result.not_storable}")
            upload = objectmeta.describe(s.store, ObjectRef(s.bucket, key), rule, result, sink.announced_at)
            if s.tombstones is not None and await is_tombstoned(s.tombstones, s.bucket, key):
                return Finished(key, "tombstoned")  # deleted through a proxy while it was fetched
            outcome = await asyncio.to_thread(store_object, store, upload, path)
            return Finished(key, "copied", size=result.size) if outcome == "stored" else Finished(key, "already-present")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError, ValueError, KeyRefused) as e:
            return Finished(key, "failed", describe_error(e))
        finally:
            path.unlink(missing_ok=True)


def serve_metrics(port: int, progress: Progress, report: Report) -> Metrics:
    """Backfill progress on the same kind of endpoint as the proxy's (ui.metrics)."""
    metrics = Metrics(port)
    metrics.add(BackfillCollector(lambda: progress.total, lambda: progress.done, lambda: progress.bytes,
                                  lambda: dict(report.counts)))
    return metrics


def listed_in_store(store: Any, bucket: str, book: RuleBook, wanted: set[str]) -> frozenset[str] | None:
    """With --origin-listing: those of `wanted` that a listing of the store's bucket under the
    Mirror rules' prefixes returns (ListObjectsV2, a request per 1,000 keys instead of a HEAD per
    key); None when the store refuses to be listed: then it is asked key by key."""
    prefixes = sorted({rule.Condition.KeyPrefixEquals for rule in book.rules_for(bucket) if rule.Redirect.is_mirror})
    prefixes = [prefix for prefix in prefixes if not any(prefix.startswith(other) for other in prefixes if other != prefix)]
    print(f"listing s3://{bucket} in the store...", file=sys.stderr)
    found: set[str] = set()
    try:
        pages = store.get_paginator("list_objects_v2")
        for prefix in prefixes:
            for page in pages.paginate(Bucket=bucket, Prefix=prefix):
                found.update(entry["Key"] for entry in page.get("Contents", []) if entry["Key"] in wanted)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        print(f"cannot list s3://{bucket} in the store ({describe_error(e)}): asking it key by key", file=sys.stderr)
        return None
    return frozenset(found)


def state_folder(given: Path | None, shard: Shard | None) -> Path:
    """--state, else .backfill, or .backfill/shard-K-of-N for a shard: each shard its own journal."""
    if given is not None:
        return given
    return DEFAULT_STATE / shard.folder if shard is not None else DEFAULT_STATE


def run_command(args: Any) -> int:
    """`backorigin backfill`: exit 0 when no key failed, 1 when some did, 2 when it cannot
    start, 130 when interrupted (run the same command again to continue)."""
    try:
        prepared = prepare(args)
        state = state_folder(args.state, prepared.shard)
        journal = Journal(state, args.bucket)
    except SweepError as e:
        print(f"backorigin backfill: {e}", file=sys.stderr)
        return 2
    listed = prepared.listed
    report = Report("backfill", args.bucket, args.store, keys=len(listed), shard=prepared.shard)
    todo: list[str] = []
    for item in listed:
        earlier = journal.done(item.key)
        if earlier is None:
            todo.append(item.key)
        else:
            report.add(earlier)
            report.resumed += 1
    sizes = [item.size for item in listed]
    total_bytes = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) and sizes else None
    if report.resumed:
        print(f"{report.resumed} of {len(listed)} key(s) finished by an earlier run ({journal.path}); "
              f"{len(todo)} to go", file=sys.stderr)
    progress = Progress(len(listed), total_bytes, report.resumed, "backfill")
    metrics = serve_metrics(args.metrics_port, progress, report) if args.metrics_port else None
    in_store = listed_in_store(make_s3_client(args.store), args.bucket, prepared.book, set(todo)) if args.origin_listing else None
    settings = Settings(prepared.book, args.store, args.bucket, state, args.concurrency, args.max_rps, args.max_bandwidth,
                        prepared.tombstones, in_store=in_store)
    status = run_and_report(Backfill(settings, progress, journal, report).run(todo), report, progress, args.report,
                            [journal.close, *([metrics.close] if metrics else [])])
    if status == 130:
        print(f"interrupted: run the same command again to continue (journal: {journal.path})", file=sys.stderr)
    return status
