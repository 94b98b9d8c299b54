"""What the final sweep's commands share (`backorigin backfill` and `verify`): where keys come
from (a key list, the miss ledger, a listing of the S3 origins), what the rules do with a key
(rules.plan.plan_get, as a GET through the proxy would), the result of each key, progress, the
report, and the loop that runs keys in a pool of workers sharing the store's clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import botocore.exceptions
from mitmproxy import http

from backorigin.deletes.tombstones import Tombstones, TombstonesError, is_tombstoned, open_tombstones
from backorigin.listing.sources import origin_s3_client
from backorigin.rules.files import load_rules
from backorigin.rules.model import MAX_RULES_CEILING, RoutingRule, RuleBook
from backorigin.rules.plan import Act, GetPlan, plan_get
from backorigin.rules.targets import NotAnS3Origin, OriginBucket
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.clients import make_s3_client
from backorigin.ui import ledger as miss_ledger

LOG_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class SweepError(Exception):
    """A sweep that cannot start (a bad source, an origin that cannot be listed...)."""


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
        raise SweepError(f"{path}: cannot read the key list: {getattr(e, 'strerror', None) or e}") from None
    return [Listed(key) for key in dict.fromkeys(keys) if key]


def keys_from_ledger(path: Path, bucket: str) -> list[Listed]:
    """The bucket's keys the miss ledger says were mirrored (any outcome but origin-404 and
    unsafe-key; see ledger.backfill), once each, in ledger order."""
    try:
        refs = miss_ledger.backfill(path, lambda bucket, key: False)  # the sweep asks the store itself
    except (OSError, ValueError) as e:
        raise SweepError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    except (KeyError, TypeError) as e:
        raise SweepError(f"{path}: not a miss ledger (an entry lacks {e})") from None
    return [Listed(key) for ref_bucket, key in refs if ref_bucket == bucket]


def keys_from_origin_listing(book: RuleBook, bucket: str,
                             make_client: Callable[[str, RoutingRule], Any] = origin_s3_client) -> list[Listed]:
    """ListObjectsV2 of the S3 origin of each Mirror rule of the bucket, under the rule's
    MirrorURL prefix plus its KeyPrefixEquals; origin keys map back to bucket keys by taking
    the MirrorURL's prefix off. Keys the rule's KeySuffixEquals excludes are left out."""
    rules = [rule for rule in book.rules_for(bucket) if rule.Redirect.is_mirror]
    if not rules:
        raise SweepError(f"{book.source}: bucket {bucket} has no Mirror rule, so there is no origin to list")
    found: dict[str, Listed] = {}
    for rule in rules:
        try:
            origin = OriginBucket.of(rule)
        except NotAnS3Origin as e:
            raise SweepError(f"--origin-listing: {e}; give the keys with --keys or --ledger") from None
        client = make_client(origin.endpoint, rule)
        wanted = origin.base + rule.Condition.KeyPrefixEquals
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=origin.bucket, Prefix=wanted):
                for entry in page.get("Contents", []):
                    key = entry["Key"][len(origin.base):]
                    if key.endswith(rule.Condition.KeySuffixEquals) and key not in found:
                        found[key] = Listed(key, int(entry.get("Size", 0)))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise SweepError(
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


def read_tombstones(where: str | None, store: str) -> Tombstones | None:
    """--tombstones: the proxies' folder (SPOOL/tombstones) or their s3://BUCKET/PREFIX/, read
    fresh (the proxies go on writing them)."""
    try:
        return open_tombstones(where, None, store, fresh=True)
    except TombstonesError as e:
        raise SweepError(f"--tombstones: {e}") from None


# one key as the proxy sees it --------------------------------------------------------------


def client_request(store: str, bucket: str, key: str) -> http.Request:
    """The GET a client would send through the proxy for the key (no headers of its own)."""
    request = http.Request.make("GET", f"{store.rstrip('/')}/{bucket}/{quote(key, safe='/-._~')}")
    request.headers.pop("content-length", None)
    return request


@dataclass(frozen=True)
class KeyPlan:
    """What the sweep does with a key: copy it from `plan.origin`, or finish it with `result`."""

    plan: GetPlan
    result: str = ""
    why: str = ""


async def plan_key(book: RuleBook, store: str, bucket: str, key: str, tombstones: Tombstones | None) -> KeyPlan:
    """What a GET of the key through the proxy would do, the store lacking it (plan_get)."""
    deleted = tombstones is not None and await is_tombstoned(tombstones, bucket, key)
    plan = plan_get(book, ObjectRef(bucket, key), client_request(store, bucket, key), 404, deleted=deleted)
    rule = plan.rule
    if rule is None:
        return KeyPlan(plan, "failed", "no rule applies to a GET of the key")
    if plan.act is Act.REDIRECT:
        return KeyPlan(plan, "failed", f"RuleNumber {rule.RuleNumber} redirects ({rule.Redirect.RedirectType}); nothing to copy")
    if plan.act is Act.KEEP_404:
        deleted_result = ("tombstoned", "") if plan.outcome == "deleted" else ("failed", f"RuleNumber {rule.RuleNumber}: {plan.detail}")
        return KeyPlan(plan, *deleted_result)
    if rule.Redirect.MirrorProxyPass:
        return KeyPlan(plan, "proxy-pass", f"RuleNumber {rule.RuleNumber} has MirrorProxyPass")
    return KeyPlan(plan)


# results, progress, report -----------------------------------------------------------------


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
    labels: dict[str, str] = field(default_factory=dict)  # every result, in the report's order, with its wording
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


# the loop ----------------------------------------------------------------------------------


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
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(concurrency + 4, thread_name_prefix="backorigin"))


# the command around it ---------------------------------------------------------------------


def prepare(args: Any) -> tuple[RuleBook, Tombstones | None, list[Listed]]:
    """The rules, the tombstones and the keys a sweep command's arguments name (SweepError)."""
    book = load_rules(args.rules, MAX_RULES_CEILING)
    return book, read_tombstones(args.tombstones, args.store), read_source(args, book)


def run_and_report(work: Coroutine[Any, Any, None], report: Report, progress: Progress, path: Path | None,
                   closing: Iterable[Callable[[], None]] = ()) -> int:
    """Run the sweep and write its report, whatever happened: exit status 0 when no key is a
    problem, 1 when some are, 130 when interrupted (Ctrl-C)."""
    started = time.monotonic()
    interrupted = False
    try:
        asyncio.run(work)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        for close in closing:
            close()
        report.seconds = time.monotonic() - started
    write_report(report, path, report.as_json())
    if interrupted:
        return 130
    return 0 if report.ok else 1
