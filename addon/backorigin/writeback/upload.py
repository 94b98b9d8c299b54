"""The upload of one object from a file, shared by the write-back worker, the sweep (`backorigin
backfill`) and the write-through worker: one PutObject below the part size, a multipart upload
above it (each part read from the file as it is sent, never held whole: an origin's parts can be
gigabytes), each checked by the receiving store (Content-MD5). A write-back is made create-only
with `If-None-Match: *`, so an object that appeared meanwhile is never overwritten; a write-through
replaces the origin's copy (`ObjectUpload.create_only`).

A create-only upload the store refuses with 412 is "exists" only when a HEAD then finds the object
(another writer was first). With no object there, the store refused the key itself (SeaweedFS
answers 412 to `dir` while `dir/x` exists: `dir` is a folder of its own): `KeyRefused`, which no
retry would change.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

import botocore.exceptions
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, stop_any, wait_exponential_jitter
from tenacity.stop import stop_base

from backorigin.s3.clients import code_of, head, is_transient, status_of
from backorigin.writeback.spool import ORIGIN_URL_META, ObjectUpload

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class KeyRefused(Exception):
    """The store refused the key itself, not because another writer was first (see the module)."""


class Unwanted(Exception):
    """The object must not be stored any more (deleted through a proxy meanwhile)."""


def upload_object(client: Any, upload: ObjectUpload, body_path: Path,
                  wanted: Callable[[], bool] = lambda: True) -> Literal["stored", "exists"]:
    """Store the body at `body_path` as `upload` says; "exists" when the key is already there;
    KeyRefused when the store refuses to create it although it holds no object there.
    `wanted()` is asked before every part and before a multipart upload is completed: when it
    says no, the upload is aborted (Unwanted), so a delete that came meanwhile wins."""
    try:
        if upload.size < upload.part_size:  # one PUT, which the store checks against Content-MD5
            with open(body_path, "rb") as body:
                etag = client.put_object(**upload.put_arguments(body)).get("ETag", "")
        else:
            upload_in_parts(client, upload, body_path, wanted)
            head = client.head_object(Bucket=upload.bucket, Key=upload.key)
            if head["ContentLength"] != upload.size:  # parts are checked one by one; the whole must add up too
                raise ValueError(f"the store holds {head['ContentLength']} bytes, {upload.size} were sent")
            etag = head.get("ETag", "")
    except botocore.exceptions.ClientError as e:
        if code_of(e) == "PreconditionFailed":
            return _precondition_failed(client, upload)
        raise
    if upload.etag and etag and etag != upload.etag:
        logger.warning("%s: the store gave it ETag %s, clients were told %s; their If-Match will fail",
                       upload.where, etag, upload.etag)
    return "stored"


def _precondition_failed(client: Any, upload: ObjectUpload) -> Literal["exists"]:
    """A create-only upload got 412: "exists" when a HEAD shows the object, else KeyRefused."""
    try:
        client.head_object(Bucket=upload.bucket, Key=upload.key)
    except botocore.exceptions.ClientError as e:
        if code_of(e) not in ("404", "NoSuchKey", "NotFound"):
            raise
        raise KeyRefused(
            f"the store answered 412 PreconditionFailed to creating {upload.where}, yet holds no object there "
            "(a HEAD finds none): it refuses the key itself, e.g. a folder of its own by that name") from None
    return "exists"


def remove_if_ours(client: Any, upload: ObjectUpload) -> bool:
    """Delete the object when it is the one this write-back stored (its ETag): a write-back that
    landed after a delete of its key. A later write of the key (another ETag) is left alone."""
    there = head(client, upload.bucket, upload.key)
    if there is None or not upload.etag or there.get("ETag") != upload.etag:
        return False
    client.delete_object(Bucket=upload.bucket, Key=upload.key)
    return True


def remove_if_written_back(client: Any, bucket: str, key: str) -> bool:
    """Delete the object when it is a write-back (by any proxy: it names its origin URL in its
    metadata), with If-Match its ETag, so that a client's later write of the key is left alone."""
    there = head(client, bucket, key)
    if there is None or ORIGIN_URL_META not in there.get("Metadata", {}):
        return False
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=there.get("ETag", ""))
    except botocore.exceptions.ClientError as e:
        if status_of(e) in (404, 412):
            return False
        raise
    return True


def upload_in_parts(client: Any, upload: ObjectUpload, body_path: Path, wanted: Callable[[], bool] = lambda: True) -> None:
    """Multipart upload in parts of `upload.part_size`, each read from the file as it is sent and
    checked by the store (Content-MD5); completed with If-None-Match: * so it stays create-only
    (unless `upload.create_only` is False), unless `wanted()` said no before a part or the
    completion (then aborted: Unwanted)."""
    started = client.create_multipart_upload(**upload.object_arguments())
    upload_id = started["UploadId"]
    try:
        parts = []
        with open(body_path, "rb") as body:
            for number, start in enumerate(range(0, upload.size, upload.part_size), start=1):
                if not wanted():
                    raise Unwanted(upload.where)
                part = FilePart(body, start, min(upload.part_size, upload.size - start))
                answer = client.upload_part(
                    Bucket=upload.bucket, Key=upload.key, UploadId=upload_id,
                    PartNumber=number, Body=part, ContentMD5=part.md5_base64(),
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        if not wanted():
            raise Unwanted(upload.where)
        client.complete_multipart_upload(
            Bucket=upload.bucket, Key=upload.key, UploadId=upload_id,
            MultipartUpload={"Parts": parts}, **upload.condition,
        )
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=upload.bucket, Key=upload.key, UploadId=upload_id)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            pass  # the store is unreachable; stores expire abandoned uploads themselves
        raise


class FilePart(io.RawIOBase):
    """`length` bytes of an open file from `start`, as a seekable stream of its own: botocore reads
    it to sign and send, and seeks back to retry."""

    _CHUNK = 1024 * 1024

    def __init__(self, file: BinaryIO, start: int, length: int) -> None:
        self._file, self._start, self._length, self._at = file, start, length, 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._length}[whence]
        self._at = min(max(base + offset, 0), self._length)
        return self._at

    def read(self, size: int | None = -1) -> bytes:
        wanted = self._length - self._at if size is None or size < 0 else min(size, self._length - self._at)
        self._file.seek(self._start + self._at)
        data = self._file.read(wanted)
        self._at += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def md5_base64(self) -> str:
        digest = hashlib.md5()
        self.seek(0)
        while chunk := self.read(self._CHUNK):
            digest.update(chunk)
        self.seek(0)
        return base64.b64encode(digest.digest()).decode()


class _StopWhen(stop_base):
    """Stop retrying once `event` is set (a shutdown that has given up waiting)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


def _log_retry(state: RetryCallState) -> None:
    upload = next((a for a in state.args if isinstance(a, ObjectUpload)), None)
    error = state.outcome.exception() if state.outcome else None
    logger.info("upload of %s: %s: %s; retrying in %.1fs", upload.where if upload else "?", type(error).__name__, error,
                state.next_action.sleep if state.next_action else 0)


def retrying(attempts: int, max_wait: float, stopping: threading.Event | None = None) -> Callable[[F], F]:
    """Transient store errors retried with exponential backoff and jitter (tenacity), at most
    `attempts` tries; a set `stopping` (a shutdown that gave up waiting) ends the retries and pauses."""
    stop = stop_after_attempt(attempts) if stopping is None else stop_any(stop_after_attempt(attempts), _StopWhen(stopping))
    return retry(  # type: ignore[return-value]
        retry=retry_if_exception(is_transient),
        stop=stop,
        wait=wait_exponential_jitter(multiplier=0.2, max=max_wait, jitter=0.5),
        before_sleep=_log_retry,
        sleep=stopping.wait if stopping is not None else time.sleep,  # type: ignore[arg-type]
        reraise=True,
    )
