"""Tombstones: deletes that stick during a migration.

A DeleteObject or DeleteObjects through the proxy, for a key a Mirror rule covers, leaves a
tombstone once the store has said yes: later misses of the key answer the store's 404 without
asking the origin, no write-back recreates it, and a merged listing leaves it out. A PUT,
CopyObject or CompleteMultipartUpload of the key clears it.

Where they live: by default a folder beside the spool (one proxy; they survive restarts:
tombstones.journal), or with `backorigin_tombstones=s3://BUCKET/PREFIX/` objects in the store itself,
written create-only, so every proxy in front of the store shares them. Either way the set is read
through the same small interface, and no request's cost grows with their number: asking about a
key is O(1) (one HEAD for the shared kind), and a listing page consults only the tombstones of the
keys it lists (listing.hiding).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import botocore.exceptions

from backorigin.s3.clients import code_of, make_s3_client, shared_s3_client, status_of, store_has
from backorigin.tombstones.journal import Intent, LocalTombstones, NoRoom, room_for

logger = logging.getLogger(__name__)

__all__ = ["Intent", "LocalTombstones", "NoRoom", "StoreTombstones", "Tombstones", "TombstonesError", "room_for"]
SHARED_WRITES = 16  # tombstones of one DeleteObjects written to the store at once (the shared kind)


class Tombstones(Protocol):
    blocking: bool  # whether asking waits on the network (then the hooks ask from a thread)

    def __contains__(self, ref: tuple[str, str]) -> bool:
        """Whether (bucket, key) was deleted through a proxy (blocking for the shared kind)."""
        ...

    def count(self) -> int | None:
        """How many there are, kept as they change; None when only a full listing could say."""
        ...

    def reserve(self, bucket: str, key: str | None, room: int) -> Intent: ...

    def commit(self, intent: Intent, keys: Sequence[str]) -> None: ...

    def withdraw(self, intent: Intent) -> None: ...

    def pending(self) -> list[tuple[Intent, bool]]:
        """Intents a crash left behind, each with whether it names its key."""
        ...

    def add(self, bucket: str, key: str) -> None: ...

    def discard(self, bucket: str, key: str) -> None: ...

    def keys(self, bucket: str, prefix: str = "", start_after: str = "", page: int | None = None) -> list[str]:
        """The bucket's tombstoned keys under `prefix` after `start_after`, in order, at most `page`."""
        ...

    def __iter__(self) -> Iterator[tuple[str, str]]: ...


class StoreTombstones:
    """Tombstones as objects `PREFIX + bucket + "/" + key` in a bucket of the store, shared by
    every proxy in front of it. Written create-only; asked with a HEAD (blocking: the hooks run
    it in a thread)."""

    blocking = True

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def parse(cls, url: str) -> tuple[str, str]:
        """(bucket, prefix) of s3://BUCKET/PREFIX/; ValueError for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise TombstonesError(f"{url!r} is not s3://BUCKET/PREFIX/")
        prefix = unquote(parts.path.lstrip("/"))
        if prefix and not prefix.endswith("/"):
            raise TombstonesError(f"{url!r}: the prefix must end with '/'")
        return parts.netloc, prefix

    def _name(self, bucket: str, key: str) -> str:
        return f"{self.prefix}{bucket}/{key}"

    def __contains__(self, ref: tuple[str, str]) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(*ref))
            return True
        except botocore.exceptions.ClientError as e:
            if status_of(e) == 404:
                return False
            raise

    def count(self) -> int | None:
        return None  # other proxies write them too

    def reserve(self, bucket: str, key: str | None, room: int) -> Intent:
        return Intent(bucket, key)  # the store keeps them: nothing of this disk's is taken

    def commit(self, intent: Intent, keys: Sequence[str]) -> None:
        with ThreadPoolExecutor(SHARED_WRITES) as pool:
            list(pool.map(lambda key: self.add(intent.bucket, key), keys))

    def withdraw(self, intent: Intent) -> None:
        return None

    def pending(self) -> list[tuple[Intent, bool]]:
        return []  # nothing is written before the store said yes

    def add(self, bucket: str, key: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._name(bucket, key), Body=b"", IfNoneMatch="*",
                                   Metadata={"deleted-at": str(round(time.time()))})
        except botocore.exceptions.ClientError as e:
            if code_of(e) != "PreconditionFailed":  # another proxy wrote it first
                raise

    def discard(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(bucket, key))

    def keys(self, bucket: str, prefix: str = "", start_after: str = "", page: int | None = None) -> list[str]:
        """The bucket's tombstoned keys under `prefix` after `start_after`, in the store's order: one
        LIST of at most `page`, 1,000 at most (blocking)."""
        base = self._name(bucket, "")
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix, "MaxKeys": min(page or 1000, 1000)}
        if start_after:
            args["StartAfter"] = base + start_after
        return [entry["Key"][len(base):] for entry in self.client.list_objects_v2(**args).get("Contents", [])]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for entry in page.get("Contents", []):
                bucket, _, key = entry["Key"][len(self.prefix):].partition("/")
                yield bucket, key


class TombstonesError(ValueError):
    """Tombstones that cannot be opened; the message says why (callers name their option)."""


def open_tombstones(where: str | None, default_folder: Path | None, store: str | None,
                    fresh: bool = False, fsync: bool = False) -> Tombstones | None:
    """The tombstones at `where`: s3://BUCKET/PREFIX/ in the store at `store`, or a folder; when
    `where` is empty, `default_folder` (None: no tombstones). `fresh`: for a process that reads
    what another one writes (the write-back worker, the sweep); `fsync`: each change reaches the
    disk before it counts (backorigin_spool_fsync)."""
    if not where:
        return LocalTombstones(default_folder, fresh, fsync) if default_folder is not None else None
    if where.startswith("s3://"):
        bucket, prefix = StoreTombstones.parse(where)
        if not store:
            raise TombstonesError("s3://... needs one named store (reverse mode's target, or one of backorigin_stores)")
        return StoreTombstones(make_s3_client(store), bucket, prefix)
    if not Path(where).is_dir():
        raise TombstonesError(f"{where} is not a folder (give the proxy's SPOOL/tombstones or s3://BUCKET/PREFIX/)")
    return LocalTombstones(Path(where), fresh, fsync)


def describe(refs: Iterator[tuple[str, str]]) -> list[str]:
    return [f"s3://{bucket}/{quote(key, safe='/')}" for bucket, key in refs]


async def is_tombstoned(tombstones: Tombstones, bucket: str, key: str) -> bool:
    """Whether the key has a tombstone, asked from a thread when that waits on the network."""
    if tombstones.blocking:
        return await asyncio.to_thread(tombstones.__contains__, (bucket, key))
    return (bucket, key) in tombstones


async def resolve_pending(tombstones: Tombstones, store: str | None) -> None:
    """Deletes that were on their way when the proxy stopped: the store is asked whether the key
    is still there (then the intent goes: the delete did not happen, or a write came after) or
    not (then the tombstone is written: the delete may have happened, and no client was told
    otherwise). A DeleteObjects' keys were never read: its intent goes."""
    for intent, named in await asyncio.to_thread(tombstones.pending):
        try:
            if not named or store is None:
                logger.warning("a %s of s3://%s was on its way when the proxy stopped: no tombstones for it",
                               "DeleteObject" if named else "DeleteObjects", intent.bucket)
                await asyncio.to_thread(tombstones.withdraw, intent)
            elif await asyncio.to_thread(store_has, shared_s3_client(store), intent.bucket, str(intent.key)):
                await asyncio.to_thread(tombstones.withdraw, intent)
            else:
                await asyncio.to_thread(tombstones.commit, intent, [str(intent.key)])
                logger.info("tombstone for s3://%s/%s: deleted while the proxy stopped", intent.bucket, intent.key)
        except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            logger.warning("the delete of s3://%s/%s left on its way stays unresolved until the next start: %s",
                           intent.bucket, intent.key, e)
