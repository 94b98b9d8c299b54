"""`backorigin backfill`: the final sweep of a migration, without mitmproxy.

Every key of a source (a key list, the miss ledger, or a listing of an S3 origin) that the
store still lacks is fetched from the origin and stored, exactly as a GET through the proxy
would have done it: the bucket's first matching rule (RuleBook.decide_after_store with the
store's 404), its URL, headers, key rewriting, secondary origin and integrity checks
(origin.build_request, OriginClient.fetch), the same metadata (objectmeta.user_metadata), and a
create-only upload (writeback's PutObject arguments and upload_in_parts), so an object that
appears meanwhile is never overwritten. Keys with a tombstone are skipped.

Bodies go to a temporary file in the state folder as they arrive, and from there to the store
(one PUT below integrity.PART_SIZE, parts above), so memory stays bounded at any size.

The state folder keeps a journal: one JSON line per finished key, written as soon as the key
is finished. A run reads it first and skips every key it names (except failed ones, which are
tried again), so after Ctrl-C or kill -9 the same command continues where the last one
stopped: only the keys that were in flight are fetched again.

`--max-rps` paces every request sent to an origin (redirects, the secondary origin and probes
included) and `--max-bandwidth` the bytes read from origins, both with a token bucket in an
httpx transport under the origin client.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, unquote, urlsplit

import boto3
import botocore.exceptions
import httpx
from botocore import UNSIGNED
from botocore.config import Config
from mitmproxy import http
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from backorigin.deletes.tombstones import LocalTombstones, StoreTombstones, Tombstones
from backorigin.miss import objectmeta
from backorigin.miss.integrity import PART_SIZE
from backorigin.miss.origin import OriginClient, OriginRequest, OriginResult, Timeouts, UnsafeKey, build_request
from backorigin.miss.probe import store_has
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.ui import ledger as miss_ledger
from backorigin.ui.metrics import BackfillCollector, Metrics
from backorigin.writeback.upload import ObjectUpload, _is_transient, make_s3_client, upload_in_parts

logger = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
DOWNLOADS = "downloads"
LOG_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
FSYNC_EVERY = 1.0  # seconds between fsyncs of the journal (each line reaches the OS at once)
MAX_INLINE = 64 * 1024**2  # bodies above this get the copy timeout (see OriginClient)

# The result of one key, as the journal and the report name it, and the report's wording.
RESULTS = {
    "copied": "copied",
    "already-present": "already present",
    "origin-404": "origin 404",
    "tombstoned": "tombstoned",
    "proxy-pass": "not stored (proxy pass)",
    "failed": "failed",
}


class BackfillError(Exception):
    """A sweep that cannot start (a bad source, an origin that cannot be listed...)."""


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


class _PacedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, pacer: Pacer) -> None:
        self._inner = inner
        self._pacer = pacer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            await self._pacer.take(len(chunk))
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class PacedTransport(httpx.AsyncBaseTransport):
    """httpx's transport with a request pacer (--max-rps) and a byte pacer (--max-bandwidth)."""

    def __init__(self, requests: Pacer | None, body_bytes: Pacer | None,
                 inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=None))
        self.requests = requests
        self.body_bytes = body_bytes
        self.sent = 0  # requests sent to origins

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.requests is not None:
            await self.requests.take()
        self.sent += 1
        response = await self._inner.handle_async_request(request)
        if self.body_bytes is not None:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _PacedStream(response.stream, self.body_bytes)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class PacedOriginClient(OriginClient):
    """The proxy's origin client (redirects, secondary origin, SigV4, integrity checks) over
    a PacedTransport."""

    def __init__(self, timeouts: Timeouts, max_inline: int, transport: PacedTransport) -> None:
        super().__init__(timeouts, max_inline)
        self.transport = transport
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, transport=transport)


# key sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    key: str
    size: int | None = None  # known from an origin listing


def keys_from_file(path: Path) -> list[Listed]:
    """One key per line (the line end taken off, nothing else); blank lines are skipped."""
    try:
        with open(path, encoding="utf-8", newline="") as lines:
            keys = [line.rstrip("\r\n") for line in lines]
    except (OSError, UnicodeDecodeError) as e:
        raise BackfillError(f"{path}: cannot read the key list: {getattr(e, 'strerror', None) or e}") from None
    return [Listed(key) for key in dict.fromkeys(keys) if key]


def keys_from_ledger(path: Path, bucket: str) -> list[Listed]:
    """The bucket's keys the miss ledger says were mirrored (any outcome but origin-404 and
    unsafe-key; see ledger.backfill), once each, in ledger order."""
    try:
        refs = miss_ledger.backfill(path, lambda bucket, key: False)  # the sweep asks the store itself
    except (OSError, ValueError) as e:
        raise BackfillError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    except (KeyError, TypeError) as e:
        raise BackfillError(f"{path}: not a miss ledger (an entry lacks {e})") from None
    return [Listed(key) for ref_bucket, key in refs if ref_bucket == bucket]


@dataclass(frozen=True)
class S3Origin:
    """Where a Mirror rule's MirrorURL points, read as a path-style S3 bucket URL."""

    endpoint: str
    bucket: str
    prefix: str  # the MirrorURL's key prefix, stripped from listed keys

    @classmethod
    def of(cls, rule: RoutingRule) -> S3Origin:
        action = rule.Redirect
        assert action.MirrorURL is not None
        if action.ReplaceKeyWith is not None or action.EnableReplacePrefix:
            raise BackfillError(
                f"RuleNumber {rule.RuleNumber} rewrites keys (ReplaceKeyWith / ReplaceKeyPrefixWith): --origin-listing "
                "cannot map the origin's keys back to the bucket's; give the keys with --keys or --ledger"
            )
        parts = urlsplit(action.MirrorURL)
        bucket, _, prefix = unquote(parts.path).lstrip("/").partition("/")
        if not bucket:
            raise BackfillError(
                f"RuleNumber {rule.RuleNumber}: MirrorURL {action.MirrorURL} names no bucket; --origin-listing needs "
                "an S3 origin as http(s)://HOST[:PORT]/BUCKET/[PREFIX/]"
            )
        return cls(f"{parts.scheme}://{parts.netloc}", bucket, prefix)


def origin_s3_client(endpoint: str, rule: RoutingRule) -> Any:
    """boto3 for an S3 origin: the rule's MirrorAuth credentials, or unsigned (a public bucket)."""
    auth = rule.Redirect.MirrorAuth
    config = Config(s3={"addressing_style": "path"}, signature_version=None if auth else UNSIGNED,
                    retries={"mode": "standard", "total_max_attempts": 4})
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=auth.Region if auth else "us-east-1", config=config,
        aws_access_key_id=auth.AccessKeyId if auth else None,
        aws_secret_access_key=auth.AccessKeySecret.get_secret_value() if auth else None,
    )


def keys_from_origin_listing(book: RuleBook, bucket: str,
                             make_client: Callable[[str, RoutingRule], Any] = origin_s3_client) -> list[Listed]:
    """ListObjectsV2 of the S3 origin of each Mirror rule of the bucket, under the rule's
    MirrorURL prefix plus its KeyPrefixEquals; origin keys map back to bucket keys by taking
    the MirrorURL's prefix off. Keys the rule's KeySuffixEquals excludes are left out."""
    rules = [rule for rule in book.rules_for(bucket) if rule.Redirect.is_mirror]
    if not rules:
        raise BackfillError(f"{book.source}: bucket {bucket} has no Mirror rule, so there is no origin to list")
    found: dict[str, Listed] = {}
    for rule in rules:
        origin = S3Origin.of(rule)
        client = make_client(origin.endpoint, rule)
        wanted = origin.prefix + rule.Condition.KeyPrefixEquals
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=origin.bucket, Prefix=wanted):
                for entry in page.get("Contents", []):
                    key = entry["Key"][len(origin.prefix):]
                    if key.endswith(rule.Condition.KeySuffixEquals) and key not in found:
                        found[key] = Listed(key, int(entry.get("Size", 0)))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise BackfillError(
                f"RuleNumber {rule.RuleNumber}: cannot list s3://{origin.bucket}/{wanted} at {origin.endpoint}: {e}"
            ) from None
    return list(found.values())


def read_source(args: Any, book: RuleBook) -> list[Listed]:
    if args.keys is not None:
        return keys_from_file(args.keys)
    if args.ledger is not None:
        return keys_from_ledger(args.ledger, args.bucket)
    print(f"listing the origin(s) of bucket {args.bucket}...", file=sys.stderr)
    return keys_from_origin_listing(book, args.bucket)


def open_tombstones(where: str | None, store: str) -> Tombstones | None:
    """The proxies' tombstones: their folder (SPOOL/tombstones) or their s3://BUCKET/PREFIX/."""
    if not where:
        return None
    if where.startswith("s3://"):
        try:
            bucket, prefix = StoreTombstones.parse(where)
        except ValueError as e:
            raise BackfillError(f"--tombstones: {e}") from None
        return StoreTombstones(make_s3_client(store), bucket, prefix)
    if not Path(where).is_dir():
        raise BackfillError(f"--tombstones: {where} is not a folder (give the proxy's SPOOL/tombstones or s3://...)")
    return LocalTombstones(Path(where))


# one key as the proxy sees it --------------------------------------------------------------


def client_request(store: str, bucket: str, key: str) -> http.Request:
    """The GET a client would send through the proxy for the key (no headers of its own)."""
    request = http.Request.make("GET", f"{store.rstrip('/')}/{bucket}/{quote(key, safe='/-._~')}")
    request.headers.pop("content-length", None)
    return request


@dataclass(frozen=True)
class Plan:
    """What the proxy would do on a miss of the key: mirror with `rule`, or not (`why`)."""

    rule: RoutingRule | None
    origin: OriginRequest | None
    result: str = ""  # when there is nothing to fetch: the key's result
    why: str = ""


def plan(book: RuleBook, store: str, bucket: str, key: str) -> Plan:
    request = client_request(store, bucket, key)
    rule = book.decide_after_store(bucket, key, "GET", request.headers.get, 404)
    if rule is None:
        return Plan(None, None, "failed", "no rule applies to a GET of the key")
    if not rule.Redirect.is_mirror:
        return Plan(rule, None, "failed", f"RuleNumber {rule.RuleNumber} redirects ({rule.Redirect.RedirectType}); nothing to copy")
    try:
        origin = build_request(rule, key, request)
    except UnsafeKey as e:
        return Plan(rule, None, "failed", f"RuleNumber {rule.RuleNumber}: {e}")
    if rule.Redirect.MirrorProxyPass:
        return Plan(rule, origin, "proxy-pass", f"RuleNumber {rule.RuleNumber} has MirrorProxyPass")
    return Plan(rule, origin)


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

    def begin(self, status: int, headers: tuple[tuple[str, str], ...], url: str) -> None:
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


_store_retry = retry(
    retry=retry_if_exception(_is_transient),
    stop=stop_after_attempt(4),
    wait=wait_exponential_jitter(multiplier=0.2, max=5, jitter=0.5),
    reraise=True,
)


@_store_retry
def store_object(client: Any, upload: ObjectUpload, body: Path) -> str:
    """Create-only upload (writeback's arguments and parts); "already-present" on 412."""
    try:
        if upload.size < PART_SIZE:
            with open(body, "rb") as data:
                client.put_object(**upload.put_arguments(data))
        else:
            upload_in_parts(client, upload, body)
            head = client.head_object(Bucket=upload.bucket, Key=upload.key)
            if head["ContentLength"] != upload.size:
                raise ValueError(f"the store holds {head['ContentLength']} bytes, {upload.size} were sent")
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
            return "already-present"
        raise
    return "copied"


def describe_error(error: BaseException) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        err = error.response.get("Error", {})
        return f"store: {err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(error).__name__}: {error}"


# journal, progress, report ---------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    key: str
    result: str
    reason: str = ""
    size: int = 0

    def line(self, bucket: str) -> str:
        entry = {"bucket": bucket, "key": self.key, "result": self.result, "time": round(time.time(), 3)}
        if self.reason:
            entry["reason"] = self.reason
        if self.size:
            entry["bytes"] = self.size
        return json.dumps(entry)


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
            raise BackfillError(f"another backfill is using {directory}; give this one its own --state") from None
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


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


class Progress:
    """A tqdm bar for objects and one for bytes on a terminal; otherwise a plain line on
    stderr every LOG_EVERY seconds. Objects finished by an earlier run count as done."""

    def __init__(self, total: int, total_bytes: int | None, done: int, verb: str, tty: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.total_bytes, self.done, self.verb = total, total_bytes, done, verb
        self.start_done = done
        self.bytes = 0
        self.started = time.monotonic()
        self._bars: list[Any] = []
        if self.tty:
            from tqdm import tqdm

            self._bars = [
                tqdm(total=total, initial=done, unit="obj", desc=f"{verb} objects", file=self.stream, dynamic_ncols=True),
                tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{verb} bytes",
                     file=self.stream, dynamic_ncols=True),
            ]

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        if self._bars:
            self._bars[1].update(count)

    def finished(self) -> None:
        self.done += 1
        if self._bars:
            self._bars[0].update(1)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        of_bytes = f" of {human_bytes(self.total_bytes)}" if self.total_bytes else ""
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.verb}: {self.done}/{self.total} objects{percent}, {human_bytes(self.bytes)}{of_bytes} read; "
                f"{rate:.1f} objects/s, {human_bytes(self.bytes / elapsed)}/s; ETA {eta}")

    async def log_lines(self) -> None:
        if self.tty:
            return
        while True:
            await asyncio.sleep(LOG_EVERY)
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        if not self.tty:
            print(self.line(), file=self.stream, flush=True)


@dataclass
class Report:
    command: str
    bucket: str
    store: str
    keys: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (key, result, reason)
    bytes: int = 0
    resumed: int = 0  # keys finished by an earlier run (counted in `counts`)
    seconds: float = 0.0
    labels: dict[str, str] = field(default_factory=lambda: dict(RESULTS))
    failing: frozenset[str] = frozenset({"failed"})

    def add(self, finished: Finished) -> None:
        self.counts[finished.result] += 1
        if finished.result in self.failing:
            self.problems.append((finished.key, finished.result, finished.reason))
        if finished.result == "copied":
            self.bytes += finished.size

    @property
    def unfinished(self) -> int:
        """Keys with no result (an interrupted run)."""
        return self.keys - sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return not any(self.counts[result] for result in self.failing) and not self.unfinished

    def as_json(self) -> dict[str, Any]:
        copies = {"bytes_copied": self.bytes, "resumed": self.resumed} if self.command == "backfill" else {}
        return {
            "command": self.command, "bucket": self.bucket, "store": self.store, "keys": self.keys,
            "counts": {result: self.counts[result] for result in self.labels}, "unfinished": self.unfinished, **copies,
            "seconds": round(self.seconds, 3),
            "problems": [{"key": key, "result": result, "reason": reason} for key, result, reason in self.problems],
            "ok": self.ok,
        }

    def text(self) -> str:
        lines = [f"{self.command} of s3://{self.bucket} at {self.store}: {self.keys} key(s) in {self.seconds:.1f}s"
                 + (f" ({self.resumed} finished by an earlier run)" if self.resumed else "")]
        width = max(len(label) for label in self.labels.values())
        for result, label in self.labels.items():
            extra = f"  ({human_bytes(self.bytes)})" if result == "copied" and self.bytes else ""
            lines.append(f"  {label:<{width}}  {self.counts[result]}{extra}")
        if self.unfinished:
            lines.append(f"  {'not finished':<{width}}  {self.unfinished}")
        for key, result, reason in self.problems:
            lines.append(f"  {self.labels.get(result, result)}: {key}: {reason}")
        return "\n".join(lines)


def write_report(report: Report, path: Path | None, json_report: dict[str, Any]) -> None:
    print(report.text())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(json_report, indent=2) + "\n")
        os.replace(partial, path)


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
        self.transport = PacedTransport(Pacer(settings.max_rps) if settings.max_rps else None,
                                        Pacer(settings.max_bandwidth) if settings.max_bandwidth else None)
        self.origin = PacedOriginClient(settings.timeouts, MAX_INLINE, self.transport)
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

    async def copy(self, store: Any, key: str) -> Finished:
        s = self.settings
        try:
            if await asyncio.to_thread(store_has, store, s.bucket, key):
                return Finished(key, "already-present")
            if await self._tombstoned(key):
                return Finished(key, "tombstoned")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            return Finished(key, "failed", describe_error(e))
        found = plan(s.book, s.store, s.bucket, key)
        if found.result:
            return Finished(key, found.result, found.why)
        assert found.rule is not None and found.origin is not None
        self._serial += 1
        path = self.downloads / f"{os.getpid()}-{self._serial}.body"
        sink = FileSink(path, self.progress.add_bytes)
        try:
            try:
                result = await self.origin.fetch(found.origin, sink)
            finally:
                sink.close()
            if result.status == 404:
                return Finished(key, "origin-404", f"{result.url} answered 404")
            if not result.ok or not sink.started:
                why = result.failure or f"the origin answered {result.status}"
                return Finished(key, "failed", f"{result.url}: {why}")
            if result.not_storable:
                return Finished(key, "failed", f"{result.url}: not stored: {result.not_storable}")
            upload = self.describe(key, found.rule, result, sink.announced_at)
            if await self._tombstoned(key):  # deleted through a proxy while it was fetched
                return Finished(key, "tombstoned")
            outcome = await asyncio.to_thread(store_object, store, upload, path)
            return Finished(key, outcome, size=result.size if outcome == "copied" else 0)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError, ValueError) as e:
            return Finished(key, "failed", describe_error(e))
        finally:
            path.unlink(missing_ok=True)

    def describe(self, key: str, rule: RoutingRule, result: OriginResult, announced_at: str) -> ObjectUpload:
        """The object the proxy would have stored (mirror.Mirror's describer, then the body's size and digests)."""
        return ObjectUpload(self.settings.store, self.settings.bucket, key, result.storable_headers,
                            objectmeta.user_metadata(result, rule.Redirect, announced_at), result.size, result.md5,
                            result.etag)

    async def _tombstoned(self, key: str) -> bool:
        return await is_tombstoned(self.settings.tombstones, self.settings.bucket, key)


async def is_tombstoned(tombstones: Tombstones | None, bucket: str, key: str) -> bool:
    if tombstones is None:
        return False
    if isinstance(tombstones, LocalTombstones):  # an in-memory set
        return (bucket, key) in tombstones
    return await asyncio.to_thread(tombstones.__contains__, (bucket, key))  # a HEAD in the store


CLIENT_POOL = 10  # connections in a boto3 client's pool (botocore's default max_pool_connections)


async def sweep(keys: Iterable[str], store: str, concurrency: int, progress: Progress,
                one: Callable[[Any, str], Awaitable[None]]) -> None:
    """`one(store_client, key)` for every key, in `concurrency` workers sharing the store's
    clients, with progress log lines meanwhile (backfill and verify)."""
    pending = iter(keys)
    use_threads(concurrency)
    clients = await store_clients(store, concurrency)

    async def worker(client: Any) -> None:
        for key in pending:
            await one(client, key)

    workers = [asyncio.create_task(worker(clients[n % len(clients)])) for n in range(concurrency)]
    ticker = asyncio.create_task(progress.log_lines())
    try:
        await asyncio.gather(*workers)
    finally:
        ticker.cancel()
        for task in workers:
            task.cancel()
        await asyncio.gather(ticker, *workers, return_exceptions=True)


async def store_clients(store: str, concurrency: int) -> list[Any]:
    """boto3 clients for the store (thread-safe), one per 10 workers so that each worker has a
    pooled connection; creating one costs ~0.1 s of CPU, so not one per worker."""
    count = -(-concurrency // CLIENT_POOL)
    return list(await asyncio.gather(*(asyncio.to_thread(make_s3_client, store) for _ in range(count))))


def use_threads(concurrency: int) -> None:
    """Enough threads for every worker's blocking store call (asyncio's default is cpu+4)."""
    from concurrent.futures import ThreadPoolExecutor

    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(concurrency + 4, thread_name_prefix="backorigin"))


def serve_metrics(port: int, progress: Progress, report: Report) -> Metrics:
    """Backfill progress on the same kind of endpoint as the proxy's (addon.metrics)."""
    metrics = Metrics(port)
    metrics.add(BackfillCollector(lambda: progress.total, lambda: progress.done, lambda: progress.bytes,
                                  lambda: dict(report.counts)))
    return metrics


def run_command(args: Any) -> int:
    """`backorigin backfill`: exit 0 when no key failed, 1 when some did, 2 when it cannot
    start, 130 when interrupted (run the same command again to continue)."""
    from backorigin.rules.model import MAX_RULES_CEILING, load_rules

    book = load_rules(args.rules, MAX_RULES_CEILING)
    try:
        tombstones = open_tombstones(args.tombstones, args.store)
        listed = read_source(args, book)
    except BackfillError as e:
        print(f"backorigin backfill: {e}", file=sys.stderr)
        return 2
    state: Path = args.state
    try:
        journal = Journal(state, args.bucket)
    except BackfillError as e:
        print(f"backorigin backfill: {e}", file=sys.stderr)
        return 2
    report = Report("backfill", args.bucket, args.store, keys=len(listed))
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
    settings = Settings(book, args.store, args.bucket, state, args.concurrency, args.max_rps, args.max_bandwidth,
                        tombstones)
    started = time.monotonic()
    interrupted = False
    try:
        asyncio.run(Backfill(settings, progress, journal, report).run(todo))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        journal.close()
        report.seconds = time.monotonic() - started
        if metrics is not None:
            metrics.close()
    write_report(report, args.report, report.as_json())
    if interrupted:
        print(f"interrupted: run the same command again to continue (journal: {journal.path})", file=sys.stderr)
        return 130
    return 0 if report.ok else 1
