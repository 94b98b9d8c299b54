"""One key's sync (blocking, in a worker thread): bring the origin's copy of a key to the store's
current state. The store has the key: its body goes from the store to a file (never held in
memory) and from the file to the origin (writeback.upload: one PUT, or a multipart upload above the
part size, each checked with Content-MD5), with its headers and user metadata. The store has none
(NoSuchKey: deleted, a delete marker): the origin's copy is deleted. A body of 1 MiB or more the
origin already has as the store does (same size, ETag, headers and metadata) is not sent again (a
worker restarted after kill -9 syncs its keys again).

The store is asked again after the copy: when its state changed meanwhile and no later write of
the key through this proxy will sync it again (another proxy's write, a write straight to the
store), the copy is made again, so that whichever copy lands last at the origin, the origin ends
as the store is. Entries of the key that reached the worker before the store was read are applied
by the copy too (their writes were in the store by then), so rewrites coalesce.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any, Literal

import botocore.exceptions

from backorigin.s3.clients import code_of, head
from backorigin.writeback.spool import PUT_PARAMS, ObjectUpload
from backorigin.writeback.upload import upload_object
from backorigin.writethrough.journal import Change, Journal

Action = Literal["put", "delete", "unchanged"]
ROUNDS = 3  # copies of a key that keeps changing meanwhile, before it waits and is tried again
COMPARE_FROM = 1024 * 1024  # bytes: a smaller body is copied again rather than compared first (a request either way)
CHUNK = 1024 * 1024
STORED_HEADERS = (*PUT_PARAMS, "expires")  # what a copy carries besides its body and user metadata
State = tuple[str | None, ...]  # the store's object as far as a change of it shows: ETag, date, version


class KeptChanging(Exception):
    """The key changed in the store during every copy: it is tried again later."""


def sync(change: Change, store: Any, origin: Any, journal: Journal, arrived: Callable[[], int]) -> tuple[Action, int]:
    """Make the origin's copy of `change`'s key what the store holds now (`store` and `origin` are
    boto3 clients); boto3's and the file system's errors are raised. `arrived()` counts the entries
    of the key that reached the worker since this sync took its own: those counted before the store
    was read were written before (an entry follows its write's 2xx), so the copy applies them too;
    returns the action and that count."""
    for _ in range(ROUNDS):
        before = arrived()
        action, copied = _sync_once(change, store, origin, journal)
        # a write since the store was read: this proxy syncs the key again anyway; none: did the store change?
        if arrived() > before or _state_of(store, change.bucket, change.key) == copied:
            return action, before
    raise KeptChanging(f"{change.where} changed in the store during each of {ROUNDS} copies to the origin")


def _sync_once(change: Change, store: Any, origin: Any, journal: Journal) -> tuple[Action, State | None]:
    copy = change.origin
    try:
        ours = store.get_object(Bucket=change.bucket, Key=change.key)
    except botocore.exceptions.ClientError as e:
        if code_of(e) != "NoSuchKey":  # NoSuchBucket, AccessDenied...: not an answer about the key
            raise
        origin.delete_object(Bucket=copy.bucket, Key=copy.key)  # a key the origin lacks too: no harm
        return "delete", None
    try:
        if ours["ContentLength"] >= COMPARE_FROM and (theirs := head(origin, copy.bucket, copy.key)) is not None \
                and _description(theirs) == _description(ours):
            return "unchanged", _state(ours)
        _copy(change, ours, origin, journal)
        return "put", _state(ours)
    finally:
        ours["Body"].close()


def _copy(change: Change, ours: dict[str, Any], origin: Any, journal: Journal) -> None:
    path = journal.new_download()
    try:
        digest, size = hashlib.md5(), 0
        with open(path, "wb") as out:
            for chunk in ours["Body"].iter_chunks(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if size != ours["ContentLength"]:
            raise ConnectionError(f"the store's body of {change.where} ended after {size} of {ours['ContentLength']} bytes")
        headers = ours["ResponseMetadata"]["HTTPHeaders"]
        copy = change.origin
        upload = ObjectUpload(copy.endpoint, copy.bucket, copy.key, {name: headers[name] for name in STORED_HEADERS if name in headers},
                              dict(ours.get("Metadata", {})), size, base64.b64encode(digest.digest()).decode(), create_only=False)
        upload_object(origin, upload, path)
    finally:
        path.unlink(missing_ok=True)


def _description(answer: dict[str, Any]) -> tuple[Any, ...]:
    """What a copy must reproduce: size, ETag (the body), stored headers, user metadata."""
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    return (headers.get("content-length"), headers.get("etag"), *(headers.get(name) for name in STORED_HEADERS),
            sorted(answer.get("Metadata", {}).items()))


def _state(answer: dict[str, Any]) -> State:
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    return headers.get("etag"), headers.get("last-modified"), headers.get("x-amz-version-id")


def _state_of(store: Any, bucket: str, key: str) -> State | None:
    found = head(store, bucket, key)
    return _state(found) if found is not None else None
