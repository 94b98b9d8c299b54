"""boto3 clients for the store (the proxy's own credentials), and what every part asks of them
and of the errors they raise.

boto3 is blocking: run its calls in a thread from the event loop.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config


@functools.cache
def shared_s3_client(endpoint: str) -> Any:
    """One store client per endpoint for the whole process (boto3 clients are safe to share between threads)."""
    return make_s3_client(endpoint)


def make_s3_client(endpoint: str, timeout: float | None = None) -> Any:
    """A boto3 S3 client for the store at `endpoint`, credentials and region from boto3's standard
    chain. With no credentials anywhere the client is unsigned, for stores that allow anonymous writes.
    `timeout`: seconds to connect and to wait for an answer (default 5 and 30)."""
    session = boto3.session.Session()
    config = Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},  # callers retry with backoff themselves
        connect_timeout=timeout or 5,
        read_timeout=timeout or 30,
        signature_version=None if session.get_credentials() else UNSIGNED,
        # Content-MD5 already guards every body; botocore's default trailing checksum would send
        # aws-chunked bodies over HTTPS, a Content-Encoding some stores (SeaweedFS) then keep
        request_checksum_calculation="when_required",
    )
    return session.client(
        "s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=config
    )


def store_has(client: Any, bucket: str, key: str) -> bool:
    """HEAD the object (blocking)."""
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError as e:
        if status_of(e) == 404:
            return False
        raise


def status_of(error: botocore.exceptions.ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def code_of(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the store is down, overloaded or throttling."""
    if isinstance(error, botocore.exceptions.ClientError):
        status = status_of(error)
        return status >= 500 or status in (409, 429)
    return isinstance(error, (botocore.exceptions.BotoCoreError, ConnectionError))


def describe_error(error: BaseException) -> str:
    """One line for a report or a log."""
    if isinstance(error, botocore.exceptions.ClientError):
        err = error.response.get("Error", {})
        return f"store: {err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(error).__name__}: {error}"
