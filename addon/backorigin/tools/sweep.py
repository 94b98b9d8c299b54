"""What the final sweep's commands share (`backorigin backfill` and `verify`): where keys come
from (a key list, the miss ledger, a listing of the S3 origins), what the rules do with a key
(rules.plan.plan_get, as a GET through the proxy would), progress, and the loop that runs keys
in a pool of workers sharing the store's clients. The report is tools.report's.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import botocore.exceptions
from mitmproxy import http

from backorigin.listing.sources import origin_s3_client
from backorigin.rules.model import MAX_RULES_CEILING, RoutingRule, RuleBook
from backorigin.rules.parsing import load_rules
from backorigin.rules.plan import Act, GetPlan, plan_get
from backorigin.rules.targets import NotAnS3Origin, OriginBucket
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.clients import make_s3_client
from backorigin.tombstones.tombstones import Tombstones, TombstonesError, is_tombstoned, open_tombstones
from backorigin.tools.report import Report, human_bytes, write_report
from backorigin.tools.shards import Shard, ShardError, shard_from_environment
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


def keys_from_origin_listing(book: RuleBook, bucket: str, shard: Shard | None = None,
                             make_client: Callable[[str, RoutingRule], Any] = origin_s3_client) -> list[Listed]:
    """ListObjectsV2 of the S3 origin of each Mirror rule of the bucket, under the rule's
    MirrorURL prefix plus its KeyPrefixEquals; origin keys map back to bucket keys by taking
    the MirrorURL's prefix off. Keys the rule's KeySuffixEquals excludes are left out, and so
    are keys another shard owns, as each page arrives. The prefix is all a listing can narrow:
    a shard's keys are spread over the whole key space, so every shard lists it all."""
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
                    if key.endswith(rule.Condition.KeySuffixEquals) and key not in found and (shard is None or shard.owns(key)):
                        found[key] = Listed(key, int(entry.get("Size", 0)))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise SweepError(
                f"RuleNumber {rule.RuleNumber}: cannot list s3://{origin.bucket}/{wanted} at {origin.endpoint}: {e}"
            ) from None
    return list(found.values())


def keys_from_store_listing(store: str, bucket: str, shard: Shard | None = None) -> list[Listed]:
    """ListObjectsV2 of the store's bucket (the proxy's credentials), the shard's keys only."""
    client = make_s3_client(store)
    found = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            found += [Listed(entry["Key"], int(entry.get("Size", 0))) for entry in page.get("Contents", [])
                      if shard is None or shard.owns(entry["Key"])]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        raise SweepError(f"cannot list s3://{bucket} at {store}: {e}") from None
    return found


def read_source(args: Any, book: RuleBook, shard: Shard | None) -> list[Listed]:
    """The keys --keys, --ledger, --store-listing or --origin-listing names, the shard's only."""
    if args.keys is not None or args.ledger is not None:
        listed = keys_from_file(args.keys) if args.keys is not None else keys_from_ledger(args.ledger, args.bucket)
        return [item for item in listed if shard is None or shard.owns(item.key)]
    if getattr(args, "store_listing", False):
        print(f"listing s3://{args.bucket} at {args.store}...", file=sys.stderr)
        return keys_from_store_listing(args.store, args.bucket, shard)
    print(f"listing the origin(s) of bucket {args.bucket}...", file=sys.stderr)
    return keys_from_origin_listing(book, args.bucket, shard)


def settle_shard(given: Shard | None, environ: Mapping[str, str]) -> Shard | None:
    """--shard, else the one JOB_COMPLETION_INDEX and JOB_COMPLETIONS name, else None (every key)."""
    try:
        return given if given is not None else shard_from_environment(environ)
    except ShardError as e:
        raise SweepError(str(e)) from None


NO_TOMBSTONES = "none"  # --tombstones none: honour none


def read_tombstones(where: str | None, store: str, ledger: Path | None = None) -> Tombstones | None:
    """--tombstones: the proxies' folder (SPOOL/tombstones) or their s3://BUCKET/PREFIX/, read
    fresh (the proxies go on writing them), or `none`. Without it, a miss ledger's keys are
    checked against the tombstones the ledger names (ui.ledger.tombstones_named): a key deleted
    through the proxy must not come back; a ledger that does not name them is refused."""
    if where is None and ledger is not None:
        try:
            where = miss_ledger.tombstones_named(ledger)
        except (OSError, ValueError) as e:
            raise SweepError(f"{e}: give --tombstones DIR, s3://BUCKET/PREFIX/ or {NO_TOMBSTONES}") from None
        if where is not None and not where.startswith("s3://") and not Path(where).is_dir():
            return None  # a proxy that left no tombstones and no write-backs removes its spool folder at exit
    if where is None or where == NO_TOMBSTONES:
        return None
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
        return KeyPlan(plan, "redirected", f"RuleNumber {rule.RuleNumber} redirects ({rule.Redirect.RedirectType}); nothing to copy")
    if plan.act is Act.KEEP_404:
        deleted_result = ("tombstoned", "") if plan.outcome == "deleted" else ("failed", f"RuleNumber {rule.RuleNumber}: {plan.detail}")
        return KeyPlan(plan, *deleted_result)
    if rule.Redirect.MirrorProxyPass:
        return KeyPlan(plan, "proxy-pass", f"RuleNumber {rule.RuleNumber} has MirrorProxyPass")
    return KeyPlan(plan)


# results, progress, report -----------------------------------------------------------------


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


@dataclass(frozen=True)
class Prepared:
    """What a sweep command's arguments name: the rules, the tombstones, the shard and its keys."""

    book: RuleBook
    tombstones: Tombstones | None
    shard: Shard | None
    listed: list[Listed]


def prepare(args: Any) -> Prepared:
    """Read what a sweep command's arguments name (SweepError when something cannot be read)."""
    shard = settle_shard(args.shard, os.environ)
    book = load_rules(args.rules, MAX_RULES_CEILING)
    tombstones = read_tombstones(args.tombstones, args.store, args.ledger)
    listed = read_source(args, book, shard)
    if shard is not None:
        print(f"shard {shard}: {len(listed)} key(s)", file=sys.stderr)
    return Prepared(book, tombstones, shard, listed)


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
    write_report(report, path)
    if interrupted:
        return 130
    return 0 if report.ok else 1
