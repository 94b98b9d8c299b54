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

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import botocore.exceptions
from mitmproxy import exceptions
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from backorigin.rules.model import RoutingRule
from backorigin.writeback.upload import make_s3_client

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
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # add and discard run in threads while the hooks read the set
        self._set: set[tuple[str, str]] = set()
        for path in [] if fresh else directory.glob("*.json"):
            try:
                entry = json.loads(path.read_text())
                self._set.add((entry["bucket"], entry["key"]))
            except (OSError, ValueError, KeyError) as e:
                logger.warning("tombstone %s unreadable, ignored: %s", path, e)

    def _path(self, bucket: str, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(f'{bucket}/{key}'.encode()).hexdigest()}.json"

    def __contains__(self, ref: tuple[str, str]) -> bool:
        if self.fresh:
            return self._path(*ref).exists()
        with self._lock:
            return ref in self._set

    def add(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"bucket": bucket, "key": key, "time": round(time.time(), 3)}))
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
            raise ValueError(f"{url!r} is not s3://BUCKET/PREFIX/")
        prefix = unquote(parts.path.lstrip("/"))
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"{url!r}: the prefix must end with '/'")
        return parts.netloc, prefix

    def _name(self, bucket: str, key: str) -> str:
        return f"{self.prefix}{bucket}/{key}"

    def __contains__(self, ref: tuple[str, str]) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(*ref))
            return True
        except botocore.exceptions.ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise

    def add(self, bucket: str, key: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._name(bucket, key), Body=b"", IfNoneMatch="*",
                                   Metadata={"deleted-at": str(round(time.time()))})
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "PreconditionFailed":  # another proxy wrote it first
                raise

    def discard(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(bucket, key))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for entry in page.get("Contents", []):
                bucket, _, key = entry["Key"][len(self.prefix):].partition("/")
                yield bucket, key


def mirrored_by(rules: Sequence[RoutingRule], key: str) -> bool:
    """Whether a Mirror rule of the bucket covers the key (its prefix and suffix; header
    conditions aside, since a later GET may carry other headers)."""
    return any(
        rule.Redirect.is_mirror and key.startswith(rule.Condition.KeyPrefixEquals) and key.endswith(rule.Condition.KeySuffixEquals)
        for rule in rules
    )


def make_tombstones(where: str | None, spool_dir: Path, store: str | None, fresh: bool = False) -> Tombstones:
    """Tombstones where backorigin_tombstones says: beside the spool, or in the store at
    `store` (backorigin_s3_endpoint, or the reverse-proxy target). `fresh`: for a process
    that reads what another one writes (the write-back worker)."""
    if not where:
        return LocalTombstones(spool_dir / "tombstones", fresh)
    try:
        bucket, prefix = StoreTombstones.parse(where)
    except ValueError as e:
        raise exceptions.OptionsError(f"backorigin_tombstones: {e}") from None
    if not store:
        raise exceptions.OptionsError(
            "backorigin_tombstones: s3://... needs backorigin_s3_endpoint (the store) outside reverse-proxy mode"
        )
    return StoreTombstones(make_s3_client(store), bucket, prefix)


def reverse_target(options: Any) -> str | None:
    for spec in getattr(options, "mode", []):
        mode = ProxyMode.parse(spec)
        if isinstance(mode, ReverseMode):
            host, port = mode.address
            return f"{mode.scheme}://{host}:{port}"
    return None


def describe(refs: Iterator[tuple[str, str]]) -> list[str]:
    return [f"s3://{bucket}/{quote(key, safe='/')}" for bucket, key in refs]
