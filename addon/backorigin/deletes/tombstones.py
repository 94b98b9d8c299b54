"""Tombstones: deletes that stick during a migration.

A DeleteObject or DeleteObjects through the proxy, for a key a Mirror rule covers, leaves a
tombstone: later misses of the key answer the store's 404 without asking the origin, and no
write-back recreates it. A PUT, CopyObject or CompleteMultipartUpload of the key clears it.

Where they live: by default a folder beside the spool (one proxy; they survive restarts), or
with `backorigin_tombstones=s3://BUCKET/PREFIX/` objects in the store itself, written
create-only, so every proxy in front of the store shares them. Either way the set is read
through the same small interface, and the in-process set answers the hot path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import botocore.exceptions

from backorigin.s3.clients import code_of, make_s3_client, status_of

logger = logging.getLogger(__name__)


class Tombstones(Protocol):
    blocking: bool  # whether asking waits on the network (then the hooks ask from a thread)

    def __contains__(self, ref: tuple[str, str]) -> bool:
        """Whether (bucket, key) was deleted through a proxy (blocking for the shared kind)."""
        ...

    def add(self, bucket: str, key: str) -> None: ...

    def discard(self, bucket: str, key: str) -> None: ...

    def __iter__(self) -> Iterator[tuple[str, str]]: ...


class LocalTombstones:
    """One small JSON file per tombstone in `directory`, named by a hash of bucket and key,
    written before the delete's answer goes back; read into memory at start-up."""

    blocking = False

    def __init__(self, directory: Path, fresh: bool = False) -> None:
        self.directory = directory
        self.fresh = fresh  # ask the folder every time: another process (the proxy) writes it
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()  # add and discard run in threads while the hooks read the set
        self._set: set[tuple[str, str]] = set()
        for path in [] if fresh else directory.glob("*.json"):
            try:
                entry = json.loads(path.read_text())
                self._set.add((entry["bucket"], entry["key"]))
            except (OSError, ValueError, KeyError) as e:
                logger.warning("tombstone %s unreadable, ignored: %s", path, e)

    def _path(self, bucket: str, key: str) -> Path:
        name = f"{bucket}/{key}".encode("utf-8", "surrogateescape")  # a key from an undecodable path too
        return self.directory / f"{hashlib.sha256(name).hexdigest()}.json"

    def __contains__(self, ref: tuple[str, str]) -> bool:
        if self.fresh:
            return self._path(*ref).exists()
        with self._lock:
            return ref in self._set

    def add(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        # a partial file of this write's own: deletes of one key may write its tombstone at once
        fd, partial = tempfile.mkstemp(dir=self.directory, prefix=path.stem + ".", suffix=".partial")
        with os.fdopen(fd, "w") as out:  # mkstemp makes it 0600
            out.write(json.dumps({"bucket": bucket, "key": key, "time": round(time.time(), 3)}))
        os.replace(partial, path)
        with self._lock:
            self._set.add((bucket, key))

    def discard(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)
        with self._lock:
            self._set.discard((bucket, key))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        with self._lock:
            return iter(sorted(self._set))


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

    def add(self, bucket: str, key: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._name(bucket, key), Body=b"", IfNoneMatch="*",
                                   Metadata={"deleted-at": str(round(time.time()))})
        except botocore.exceptions.ClientError as e:
            if code_of(e) != "PreconditionFailed":  # another proxy wrote it first
                raise

    def discard(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(bucket, key))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for entry in page.get("Contents", []):
                bucket, _, key = entry["Key"][len(self.prefix):].partition("/")
                yield bucket, key


class TombstonesError(ValueError):
    """Tombstones that cannot be opened; the message says why (callers name their option)."""


def open_tombstones(where: str | None, default_folder: Path | None, store: str | None,
                    fresh: bool = False) -> Tombstones | None:
    """The tombstones at `where`: s3://BUCKET/PREFIX/ in the store at `store`, or a folder; when
    `where` is empty, `default_folder` (None: no tombstones). `fresh`: for a process that reads
    what another one writes (the write-back worker, the sweep)."""
    if not where:
        return LocalTombstones(default_folder, fresh) if default_folder is not None else None
    if where.startswith("s3://"):
        bucket, prefix = StoreTombstones.parse(where)
        if not store:
            raise TombstonesError("s3://... needs one named store (reverse mode's target, or one of backorigin_stores)")
        return StoreTombstones(make_s3_client(store), bucket, prefix)
    if not Path(where).is_dir():
        raise TombstonesError(f"{where} is not a folder (give the proxy's SPOOL/tombstones or s3://BUCKET/PREFIX/)")
    return LocalTombstones(Path(where), fresh)


def describe(refs: Iterator[tuple[str, str]]) -> list[str]:
    return [f"s3://{bucket}/{quote(key, safe='/')}" for bucket, key in refs]


async def is_tombstoned(tombstones: Tombstones, bucket: str, key: str) -> bool:
    """Whether the key has a tombstone, asked from a thread when that waits on the network."""
    if tombstones.blocking:
        return await asyncio.to_thread(tombstones.__contains__, (bucket, key))
    return (bucket, key) in tombstones
