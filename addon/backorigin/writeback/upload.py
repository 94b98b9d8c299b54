"""Write-back: store a mirrored object in the bucket, durably, off the event loop, create-only.

Every write-back is spooled to disk (the body, then a JSON manifest) by `submit` itself,
before any upload worker is involved, so it survives a store outage and a proxy restart: at
start-up the spool is read and resumed. Uploads run in a small thread pool (boto3 is blocking). `If-None-Match: *` makes every write
create-only: an object that appeared meanwhile (a client PUT, another proxy's write-back)
is never overwritten, and that conflict counts as success. Large bodies go up in parts read
lazily from the spool file, so memory stays bounded whatever the object size.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, stop_any, wait_exponential_jitter
from tenacity.stop import stop_base

from backorigin.miss.integrity import PART_SIZE

logger = logging.getLogger(__name__)

# S3 user metadata holding the Last-Modified a miss announced (see objectmeta.user_metadata)
LAST_MODIFIED_META = "backorigin-last-modified"

# Storable origin headers and the PutObject parameter each becomes.
_PUT_PARAMS = {
    "content-type": "ContentType",
    "content-encoding": "ContentEncoding",
    "content-disposition": "ContentDisposition",
    "cache-control": "CacheControl",
    "content-language": "ContentLanguage",
}

# "gone": a write-back this worker never saw end (an earlier worker finished it; see WriteBack.queue)
Outcome = Literal["stored", "exists", "deferred", "failed", "dropped", "deleted", "gone"]


@dataclass(frozen=True)
class ObjectUpload:
    """What to store (the manifest of a spooled write-back; the body lives beside it)."""

    endpoint: str
    bucket: str
    key: str
    headers: dict[str, str]  # storable origin headers
    metadata: dict[str, str]  # S3 user metadata (see objectmeta)
    size: int
    md5: str  # base64, as Content-MD5 wants it
    etag: str = ""  # the ETag the store will give it (integrity.StoreETag), announced to clients

    @property
    def last_modified(self) -> str:
        """The Last-Modified clients were told, kept as metadata."""
        return self.metadata.get(LAST_MODIFIED_META, "")

    def object_arguments(self) -> dict[str, Any]:
        """Object headers, metadata and storage class, common to PutObject and multipart."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key,
            "StorageClass": "STANDARD",
            "Metadata": self.metadata,
        }
        for header, param in _PUT_PARAMS.items():
            if header in self.headers:
                args[param] = self.headers[header]
        if "expires" in self.headers:
            try:
                args["Expires"] = parsedate_to_datetime(self.headers["expires"])
            except (TypeError, ValueError):
                logger.info("not storing unparsable Expires %r for %s", self.headers["expires"], self.key)
        return args

    def put_arguments(self, body: bytes | BinaryIO) -> dict[str, Any]:
        """PutObject arguments: the store checks Content-MD5; If-None-Match makes it create-only."""
        return {**self.object_arguments(), "Body": body, "ContentMD5": self.md5, "IfNoneMatch": "*"}

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class Spool:
    """A directory of pending write-backs: `<id>.body` and `<id>.json` (written last, so a
    manifest always has a complete body). Uploads that fail for good move to `failed/`."""

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self.failed = directory / "failed"
        self.failed.mkdir(parents=True, exist_ok=True)

    def add(self, upload: ObjectUpload, source: Path) -> Path:
        """Spool the body in `source` (a file in this directory, moved in) under a manifest
        written last; returns the manifest path. With `fsync` the manifest and the directory
        reach the disk before this returns (the body's writer syncs the body itself)."""
        name = uuid.uuid4().hex
        os.replace(source, self.directory / f"{name}.body")
        manifest = self.directory / f"{name}.json"
        partial = manifest.with_suffix(".json.partial")
        with open(partial, "w") as out:
            out.write(json.dumps(asdict(upload)))
            if self.fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(partial, manifest)
        if self.fsync:
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return manifest

    def new_body_path(self) -> Path:
        """A fresh file in the spool's file system, for a download to land in before add()."""
        return self.directory / f"{uuid.uuid4().hex}.download"

    def pending(self) -> Iterator[tuple[Path, ObjectUpload]]:
        for manifest in sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime):
            yield manifest, ObjectUpload(**json.loads(manifest.read_text()))

    @staticmethod
    def body_of(manifest: Path) -> Path:
        return manifest.with_suffix(".body")

    def finish(self, manifest: Path) -> None:
        self.body_of(manifest).unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)

    def keep_failed(self, manifest: Path) -> None:
        for path in (self.body_of(manifest), manifest):
            if path.exists():
                shutil.move(path, self.failed / path.name)

    def clear_downloads(self) -> None:
        """Half-written downloads from a previous run can never be completed; drop them."""
        for leftover in [*self.directory.glob("*.download"), *self.directory.glob("*.partial")]:
            leftover.unlink(missing_ok=True)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status in (409, 429)
    return isinstance(error, (botocore.exceptions.BotoCoreError, ConnectionError))


def _log_retry(state: RetryCallState) -> None:
    upload = state.args[0]
    error = state.outcome.exception() if state.outcome else None
    logger.info("write-back of %s: %s: %s; retrying in %.1fs", upload.where, type(error).__name__, error,
                state.next_action.sleep if state.next_action else 0)


class Deleted(Exception):
    """The object was deleted through a proxy: its write-back must not recreate it."""


class _StopWhen(stop_base):
    """Stop retrying once `event` is set (a shutdown that has given up waiting)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


class WriteBack:
    """Spooled uploads in background threads: retried, resumable, drained at shutdown. The
    write-back worker process runs it (backorigin.writeback.worker); `report` hears how each
    write-back ended, "deferred" (the store is unreachable; it stays spooled) included."""

    def __init__(
        self, spool_dir: Path, workers: int = 4, attempts: int = 8, fsync: bool = False,
        report: Callable[[Path, Outcome], None] = lambda manifest, outcome: None,
    ) -> None:
        self.spool = Spool(spool_dir, fsync)
        self.report = report  # called on the event loop
        # whether the object was deleted through a proxy (a tombstone): checked in the worker
        # right before each upload, so no write-back recreates a deleted object
        self.deleted: Callable[[ObjectUpload], bool] = lambda upload: False
        self.endpoint: str | None = None  # replaces the store every write-back is headed for
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backorigin-writeback")
        self._pending: dict[Path, concurrent.futures.Future[Outcome]] = {}  # by manifest
        self._withdrawn: set[Path] = set()  # cancelled because of a delete
        self._deferred: dict[Path, ObjectUpload] = {}  # store unreachable for now; retried later
        self._deferred_lock = threading.Lock()
        self._stopping = threading.Event()
        self._upload = retry(
            retry=retry_if_exception(_is_transient),
            stop=stop_any(stop_after_attempt(attempts), _StopWhen(self._stopping)),
            wait=wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.5),
            before_sleep=_log_retry,
            sleep=self._stopping.wait,  # type: ignore[arg-type]  # a sync sleep (tenacity types only async); a given-up shutdown ends the pauses
            reraise=True,
        )(self._upload_once)

    def queue(self, manifest: Path) -> None:
        """Store the write-back spooled under `manifest`, unless it is already under way;
        one no longer in the spool is reported "gone" (it ended in an earlier worker)."""
        with self._deferred_lock:
            known = manifest in self._pending or manifest in self._deferred
        if known:
            return
        try:
            upload = ObjectUpload(**json.loads(manifest.read_text()))
        except FileNotFoundError:
            self.report(manifest, "gone")
            return
        self._run(manifest, replace(upload, endpoint=self.endpoint) if self.endpoint else upload)

    def resume(self) -> None:
        """Queue every write-back in the spool (what a previous run left, and anything spooled
        before this worker started). Downloads under way are the proxy's: left alone."""
        resumed = list(self.spool.pending())
        for manifest, _ in resumed:
            self.queue(manifest)
        if resumed:
            logger.info("resuming %d spooled write-back(s) from %s", len(resumed), self.spool.directory)

    def retry_deferred(self) -> int:
        """Queue again the write-backs that gave up while the store was unreachable."""
        with self._deferred_lock:
            deferred, self._deferred = self._deferred, {}
        for manifest, upload in deferred.items():
            self._run(manifest, upload)
        return len(deferred)

    def _run(self, manifest: Path, upload: ObjectUpload) -> None:
        future = self._executor.submit(self._store, manifest, upload)
        self._pending[manifest] = future
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._finished, manifest, done))

    def _finished(self, manifest: Path, future: concurrent.futures.Future[Outcome]) -> None:
        if self._pending.get(manifest) is future:
            del self._pending[manifest]
        if future.cancelled():  # withdrawn for a delete, or left spooled by a shutdown
            outcome: Outcome = "deleted" if manifest in self._withdrawn else "deferred"
            self._withdrawn.discard(manifest)
        else:
            outcome = future.result() if not future.exception() else "failed"
        self.report(manifest, outcome)

    async def withdraw(self, manifest: Path) -> None:
        """A delete of the object is on its way to the store: its write-back must not land
        after it. One no thread has started is cancelled and unspooled; one being uploaded is
        waited for, so the delete reaches the store after it. Every withdrawal is reported."""
        with self._deferred_lock:
            deferred = self._deferred.pop(manifest, None)
        future = self._pending.get(manifest)
        if future is not None and not future.cancel():
            await asyncio.wrap_future(future)  # being uploaded: reported when it ends, the delete goes after it
            return
        if future is not None:
            self._withdrawn.add(manifest)  # reported by _finished, which the loop runs after this
            self.spool.finish(manifest)
            return
        outcome: Outcome = "deleted" if deferred is not None or manifest.exists() else "gone"
        self.spool.finish(manifest)
        self.report(manifest, outcome)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for pending uploads; what is left stays spooled."""
        if self._pending:
            logger.info("waiting up to %gs for %d pending write-back(s)", timeout, len(self._pending))
            _, unfinished = await asyncio.wait([asyncio.wrap_future(f) for f in self._pending.values()], timeout=timeout)
            if unfinished:
                logger.warning(
                    "%d write-back(s) still pending; they stay in %s and resume at the next start",
                    len(unfinished), self.spool.directory,
                )
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _store(self, manifest: Path, upload: ObjectUpload) -> Outcome:
        try:
            self._upload(upload, self.spool.body_of(manifest))
        except Deleted:
            logger.info("write-back of %s dropped: the object was deleted through a proxy", upload.where)
            self.spool.finish(manifest)
            return "deleted"
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                logger.info("write-back skipped, %s already exists", upload.where)
                self.spool.finish(manifest)
                return "exists"
            return self._failed(manifest, upload, e)
        except Exception as e:  # any failure is logged and kept, never raised into the loop
            return self._failed(manifest, upload, e)
        self.spool.finish(manifest)
        logger.info("write-back stored %s (%d bytes)", upload.where, upload.size)
        return "stored"

    def _failed(self, manifest: Path, upload: ObjectUpload, error: Exception) -> Outcome:
        if _is_transient(error):  # the store is down or overloaded: keep it spooled, try later
            with self._deferred_lock:
                self._deferred[manifest] = upload
            logger.warning("write-back of %s deferred: %s: %s; it stays spooled", upload.where, type(error).__name__, error)
            return "deferred"
        self.spool.keep_failed(manifest)
        logger.error("write-back of %s failed: %s: %s (kept in %s)", upload.where, type(error).__name__, error, self.spool.failed)
        return "failed"

    def _upload_once(self, upload: ObjectUpload, body_path: Path) -> None:
        if self.deleted(upload):  # before every attempt: a retried upload may outlive a delete
            raise Deleted(upload.where)
        client = shared_s3_client(upload.endpoint)
        if upload.size < PART_SIZE:  # one PUT, which the store checks against Content-MD5
            with open(body_path, "rb") as body:
                etag = client.put_object(**upload.put_arguments(body)).get("ETag", "")
        else:
            upload_in_parts(client, upload, body_path)
            head = client.head_object(Bucket=upload.bucket, Key=upload.key)
            if head["ContentLength"] != upload.size:  # parts are checked one by one; the whole must add up too
                raise ValueError(f"the store holds {head['ContentLength']} bytes, {upload.size} were sent")
            etag = head.get("ETag", "")
        if upload.etag and etag and etag != upload.etag:
            logger.warning("%s: the store gave it ETag %s, clients were told %s; their If-Match will fail",
                           upload.where, etag, upload.etag)

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


@functools.cache
def shared_s3_client(endpoint: str) -> Any:
    """One client per store for the whole process (boto3 clients are safe to share between threads)."""
    return make_s3_client(endpoint)


def make_s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for `endpoint`, credentials and region from boto3's standard chain.

    With no credentials anywhere the client is unsigned, for stores that allow anonymous writes.
    """
    session = boto3.session.Session()
    config = Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},  # WriteBack retries with backoff itself
        connect_timeout=5,
        read_timeout=30,
        signature_version=None if session.get_credentials() else UNSIGNED,
        # Content-MD5 already guards every body; botocore's default trailing checksum would send
        # aws-chunked bodies over HTTPS, a Content-Encoding some stores (SeaweedFS) then keep
        request_checksum_calculation="when_required",
    )
    return session.client(
        "s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=config
    )
