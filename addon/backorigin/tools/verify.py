"""`backorigin verify`: is every object of a migration in the store, the same as at the origin?
And, with `--check origin`, the other way round: is every object of the store at the origin, so
that a rollback to the origin (write-through) loses nothing?

For each key of the same sources as `backorigin backfill`, HEAD the store, then HEAD the
origin at the URL the bucket's rule builds for the key, with the proxy's own origin client (the
headers, SigV4 with MirrorAuth, redirect policy and MirrorURLSlave of a miss's GET). A key is a problem
when the store lacks it while the origin has it, or when the two sizes differ, or the two
ETags where both are plain MD5 ETags (an origin or store ETag of a multipart upload or of
another kind is not comparable). Exit status 0 means every key is there and matches: the
rules can go.

`--check origin` HEADs the key's copy in the S3 origin's bucket (rules.writethrough.origin_copy,
signed with MirrorAuth) instead: a key is a problem when the store has it and the origin does not,
or has it with another size or plain-MD5 ETag, or when the proxy deleted it (a tombstone) and the
origin still has it. Exit status 0 means the origin holds what the store holds: a rollback is safe.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import botocore.exceptions

from backorigin.listing.sources import origin_s3_client
from backorigin.miss.integrity import plain_md5
from backorigin.miss.origin import OriginClient, OriginResult, Timeouts
from backorigin.rules.model import RuleBook
from backorigin.rules.plan import covering_mirror
from backorigin.rules.targets import NotAnS3Origin
from backorigin.rules.writethrough import origin_copy
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.clients import describe_error, head, status_of
from backorigin.tombstones.tombstones import Tombstones, is_tombstoned
from backorigin.tools.report import Finished, Report
from backorigin.tools.sweep import Progress, SweepError, plan_key, prepare, run_and_report, sweep


def compare(store_size: int, store_etag: str | None, origin: OriginResult) -> str:
    """Why the store's object differs from the origin's answer to a HEAD ("" when it does not)."""
    length = origin.header("content-length")
    return difference(store_size, store_etag, int(length) if length is not None and length.isdigit() else None,
                      origin.header("etag"))


def difference(store_size: int, store_etag: str | None, origin_size: int | None, origin_etag: str | None) -> str:
    """Why two objects differ: their sizes, or their ETags where both are plain MD5 ETags ("" when they do not)."""
    if origin_size is not None and origin_size != store_size:
        return f"size: store {store_size} bytes, origin {origin_size}"
    ours, theirs = plain_md5(store_etag), plain_md5(origin_etag)
    if ours and theirs and ours != theirs:
        return f"ETag: store {ours}, origin {theirs}"
    return ""


class Verify:
    def __init__(self, book: RuleBook, store: str, bucket: str, tombstones: Tombstones | None,
                 progress: Progress, report: Report, timeout: float = 30.0) -> None:
        self.book, self.store, self.bucket, self.tombstones = book, store, bucket, tombstones
        self.progress = progress
        self.report = report
        self.origin = OriginClient(Timeouts(connect=timeout, read=timeout, total=timeout))

    async def run(self, keys: list[str], concurrency: int) -> None:
        try:
            await sweep(keys, self.store, concurrency, self.progress, self._one)
        finally:
            await self.origin.aclose()

    async def _one(self, store: Any, key: str) -> None:
        try:
            finished = await self.check(store, key)
        except Exception as e:  # one key's fault never stops the check
            finished = Finished(key, "unchecked", describe_error(e))
        self.report.add(finished)
        self.progress.finished()

    async def check(self, store: Any, key: str) -> Finished:
        try:
            head = await asyncio.to_thread(store.head_object, Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if status_of(e) != 404:
                return Finished(key, "unchecked", describe_error(e))
            head = None
        planned = await plan_key(self.book, self.store, self.bucket, key, self.tombstones if head is None else None)
        if planned.result in ("tombstoned", "proxy-pass", "redirected") and head is None:
            return Finished(key, planned.result, planned.why)
        origin = planned.plan.origin
        if origin is None:
            if head is not None:  # in the store; no rule to compare it with
                return Finished(key, "ok", planned.why)
            return Finished(key, "missing", planned.why)
        answer = await self.origin.head(origin)
        if answer.failure is not None:
            return Finished(key, "unchecked" if head is not None else "missing", f"{answer.url}: {answer.detail}")
        where = answer.final_url or answer.url
        if head is None:
            if answer.status == 404:
                return Finished(key, "origin-404", f"{where} answered 404")
            return Finished(key, "missing", f"not in the store; the origin answered {answer.status} at {where}")
        self.progress.add_bytes(int(head.get("ContentLength", 0)))
        if answer.status == 404:
            return Finished(key, "ok", "the origin no longer has it")
        if answer.status != 200:
            return Finished(key, "unchecked", f"the origin answered {answer.status} to HEAD {where}")
        why = compare(int(head.get("ContentLength", 0)), head.get("ETag"), answer)
        return Finished(key, "differs", why) if why else Finished(key, "ok")


class VerifyOrigin(Verify):
    """--check origin: the store's objects at the origin (see the module's docstring)."""

    def __init__(self, book: RuleBook, store: str, bucket: str, tombstones: Tombstones | None,
                 progress: Progress, report: Report) -> None:
        super().__init__(book, store, bucket, tombstones, progress, report)
        self._origins: dict[tuple[str, int], Any] = {}  # boto3 clients by origin endpoint and rule

    async def check(self, store: Any, key: str) -> Finished:
        ref = ObjectRef(self.bucket, key)
        rule = covering_mirror(self.book, ref)
        try:
            copy = origin_copy(self.book, ref, written_through=False)
        except NotAnS3Origin as e:
            return Finished(key, "unchecked", f"{e}: not an S3 bucket to compare with")
        if rule is None or copy is None:
            return Finished(key, "no-origin", "no Mirror rule covers the key")
        if (copy.endpoint, rule.RuleNumber) not in self._origins:  # made here, on one thread: boto3's making is not thread-safe
            self._origins[copy.endpoint, rule.RuleNumber] = origin_s3_client(copy.endpoint, rule)
        try:
            ours = await asyncio.to_thread(head, store, self.bucket, key)
            theirs = await asyncio.to_thread(head, self._origins[copy.endpoint, rule.RuleNumber], copy.bucket, copy.key)
        except botocore.exceptions.ClientError as e:
            return Finished(key, "unchecked", describe_error(e))
        if ours is None:
            if theirs is None:
                return Finished(key, "absent")
            if self.tombstones is not None and await is_tombstoned(self.tombstones, self.bucket, key):
                return Finished(key, "deleted", f"the origin still has {copy.where}")
            return Finished(key, "origin-only", f"only at {copy.where}")
        self.progress.add_bytes(int(ours.get("ContentLength", 0)))
        if theirs is None:
            return Finished(key, "missing", f"not at the origin: {copy.where}")
        why = difference(int(ours.get("ContentLength", 0)), ours.get("ETag"), int(theirs.get("ContentLength", 0)), theirs.get("ETag"))
        return Finished(key, "differs", f"{copy.where}: {why}") if why else Finished(key, "ok")


def run_command(args: Any) -> int:
    """`backorigin verify`: 0 when every key is in the store and matches (with --check origin: at the
    origin), 1 when not, 2 when it cannot start, 130 when interrupted."""
    try:
        prepared = prepare(args)
    except SweepError as e:
        print(f"backorigin verify: {e}", file=sys.stderr)
        return 2
    keys = [item.key for item in prepared.listed]
    origin = args.check == "origin"
    report = Report("verify-origin" if origin else "verify", args.bucket, args.store, keys=len(keys), shard=prepared.shard)
    progress = Progress(len(keys), None, 0, "verify")
    checker = (VerifyOrigin if origin else Verify)(prepared.book, args.store, args.bucket, prepared.tombstones, progress, report)
    return run_and_report(checker.run(keys, args.concurrency), report, progress, args.report)
