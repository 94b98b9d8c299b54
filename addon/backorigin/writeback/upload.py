"""The upload of one spooled object, create-only, shared by the write-back worker and the sweep
(`backorigin backfill`): one PutObject below the part size, a multipart upload above it (one part
in memory at a time), each checked by the store (Content-MD5) and made create-only with
`If-None-Match: *`, so an object that appeared meanwhile is never overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import botocore.exceptions
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, stop_any, wait_exponential_jitter
from tenacity.stop import stop_base

from backorigin.limits import PART_SIZE
from backorigin.s3.clients import code_of, is_transient
from backorigin.writeback.spool import ObjectUpload

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def upload_object(client: Any, upload: ObjectUpload, body_path: Path) -> Literal["stored", "exists"]:
    """Store the body at `body_path` as `upload` says; "exists" when the key is already there."""
    try:
        if upload.size < PART_SIZE:  # one PUT, which the store checks against Content-MD5
            with open(body_path, "rb") as body:
                etag = client.put_object(**upload.put_arguments(body)).get("ETag", "")
        else:
            upload_in_parts(client, upload, body_path)
            head = client.head_object(Bucket=upload.bucket, Key=upload.key)
            if head["ContentLength"] != upload.size:  # parts are checked one by one; the whole must add up too
                raise ValueError(f"the store holds {head['ContentLength']} bytes, {upload.size} were sent")
            etag = head.get("ETag", "")
    except botocore.exceptions.ClientError as e:
        if code_of(e) == "PreconditionFailed":
            return "exists"
        raise
    if upload.etag and etag and etag != upload.etag:
        logger.warning("%s: the store gave it ETag %s, clients were told %s; their If-Match will fail",
                       upload.where, etag, upload.etag)
    return "stored"


def upload_in_parts(client: Any, upload: ObjectUpload, body_path: Path) -> None:
    """Multipart upload, one part in memory at a time, each part checked by the store
    (Content-MD5); completed with If-None-Match: * so it stays create-only."""
    started = client.create_multipart_upload(**upload.object_arguments())
    upload_id = started["UploadId"]
    try:
        parts = []
        with open(body_path, "rb") as body:
            number = 1
            while chunk := body.read(PART_SIZE):
                md5 = base64.b64encode(hashlib.md5(chunk).digest()).decode()
                answer = client.upload_part(
                    Bucket=upload.bucket, Key=upload.key, UploadId=upload_id,
                    PartNumber=number, Body=chunk, ContentMD5=md5,
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                number += 1
        client.complete_multipart_upload(
            Bucket=upload.bucket, Key=upload.key, UploadId=upload_id,
            MultipartUpload={"Parts": parts}, IfNoneMatch="*",
        )
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=upload.bucket, Key=upload.key, UploadId=upload_id)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            pass  # the store is unreachable; stores expire abandoned uploads themselves
        raise


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
