"""Write-back: store a mirrored object in the bucket, off the event loop, create-only.

boto3 is blocking, so every upload runs in a small thread pool. `If-None-Match: *`
makes the write create-only: an object that appeared meanwhile (a client PUT, another
proxy's write-back) is never overwritten, and that conflict counts as success.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential_jitter,
)

logger = logging.getLogger(__name__)

# Storable origin headers and the PutObject parameter each becomes.
_PUT_PARAMS = {
    "content-type": "ContentType",
    "content-encoding": "ContentEncoding",
    "content-disposition": "ContentDisposition",
    "cache-control": "CacheControl",
    "content-language": "ContentLanguage",
}

Outcome = Literal["stored", "exists", "failed"]


@dataclass(frozen=True)
class ObjectUpload:
    endpoint: str
    bucket: str
    key: str
    body: bytes
    headers: dict[str, str]  # storable origin headers
    metadata: dict[str, str]  # S3 user metadata (see objectmeta)

    def put_arguments(self) -> dict[str, Any]:
        """PutObject arguments: object headers, metadata, integrity and create-only."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key,
            "Body": self.body,
            "ContentMD5": base64.b64encode(hashlib.md5(self.body).digest()).decode(),
            "StorageClass": "STANDARD",
            "IfNoneMatch": "*",
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


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status in (409, 429)
    return isinstance(
        error,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
        ),
    )


class WriteBack:
    """Uploads in background threads; tracks what is pending so shutdown can wait for it."""

    def __init__(self, workers: int = 4, attempts: int = 5) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backorigin-writeback")
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._pending: set[asyncio.Future[Outcome]] = set()
        self._stopping = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self._put = retry(
            retry=retry_if_exception(_is_transient),
            stop=stop_any(stop_after_attempt(attempts), lambda _: self._stopping.is_set()),
            wait=wait_exponential_jitter(multiplier=0.2, max=5, jitter=0.2),
            reraise=True,
        )(self._put_once)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, upload: ObjectUpload) -> asyncio.Future[Outcome]:
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._store, upload)
        self._pending.add(future)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: asyncio.Future[Outcome]) -> None:
        self._pending.discard(future)
        self.outcomes[future.result() if not future.cancelled() else "failed"] += 1

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for pending uploads, then stop retrying."""
        if self._pending:
            logger.info("waiting up to %gs for %d pending write-back(s)", timeout, len(self._pending))
            _, unfinished = await asyncio.wait(set(self._pending), timeout=timeout)
            if unfinished:
                logger.warning("%d write-back(s) did not finish before shutdown", len(unfinished))
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _store(self, upload: ObjectUpload) -> Outcome:
        where = f"s3://{upload.bucket}/{upload.key}"
        try:
            self._put(upload)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                logger.info("write-back skipped, %s already exists", where)
                return "exists"
            logger.error("write-back of %s failed: %s", where, e)
            return "failed"
        except Exception as e:  # any other failure is logged, never raised into the loop
            logger.error("write-back of %s failed: %s: %s", where, type(e).__name__, e)
            return "failed"
        logger.info("write-back stored %s (%d bytes)", where, len(upload.body))
        return "stored"

    def _put_once(self, upload: ObjectUpload) -> None:
        self._client(upload.endpoint).put_object(**upload.put_arguments())

    def _client(self, endpoint: str) -> Any:
        with self._clients_lock:
            if endpoint not in self._clients:
                self._clients[endpoint] = make_s3_client(endpoint)
            return self._clients[endpoint]


def make_s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for `endpoint`, credentials and region from boto3's standard chain.

    With no credentials anywhere the client is unsigned, for stores that allow anonymous writes.
    """
    session = boto3.session.Session()
    config = Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},  # WriteBack retries with backoff itself
        connect_timeout=5,
        read_timeout=60,
        signature_version=None if session.get_credentials() else UNSIGNED,
    )
    return session.client(
        "s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=config
    )
