"""boto3 clients for the store (the proxy's own credentials), and what every part asks of them
and of the errors they raise.

boto3 is blocking: run its calls in a thread from the event loop.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.exceptions
import botocore.handlers
import botocore.parsers
import botocore.session
from botocore import UNSIGNED
from botocore.config import Config

from backorigin import xmlsafe
from backorigin.s3.addressing import host_bucket_base


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


def foreign_s3_client(endpoint: str, region: str = "us-east-1", keys: tuple[str, str] | None = None,
                      attempts: int = 3) -> Any:
    """A boto3 client for an S3 origin (not the store): signed with `keys` (access key id, secret:
    SigV4), else unsigned. Like the origin fetches, it reads no credentials, config or proxy
    variables of this machine: an origin's requests are signed as its rule says, and nothing else;
    and its answers are read without DTDs or entities (refuse_xml_bombs). An endpoint whose host is
    ${bucket}.HOST (rules.targets.OriginBucket) is asked at BUCKET.HOST, BUCKET the one each request
    names: the rule's own host for that bucket, and no other."""
    base = host_bucket_base(endpoint)
    session = botocore.session.Session()
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    config = Config(
        s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=5,
        read_timeout=30, signature_version="s3v4" if keys else UNSIGNED, proxies={},
        request_checksum_calculation="when_required",  # as make_s3_client: Content-MD5 guards bodies
    )
    client = refuse_xml_bombs(boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=base or endpoint, region_name=region, config=config,
        aws_access_key_id=keys[0] if keys else None, aws_secret_access_key=keys[1] if keys else None,
    ))
    if base is not None:
        client.meta.events.register("before-sign.s3", bucket_into_host)
    return client


def bucket_into_host(request: Any, **_: Any) -> None:
    """Move the bucket of a path-style request (HOST/BUCKET/KEY) into its host (BUCKET.HOST/KEY)
    before it is signed. Not botocore's own virtual-hosted addressing, which falls back to the path
    (the bare HOST) for a bucket name with dots."""
    parts = urlsplit(request.url)
    bucket, _, rest = parts.path.removeprefix("/").partition("/")
    if not _HOST_LABELS.fullmatch(bucket):
        raise ValueError(f"{bucket!r} cannot be put in a host name")
    request.url = urlunsplit((parts.scheme, f"{bucket}.{parts.netloc}", f"/{rest}", parts.query, parts.fragment))


_HOST_LABELS = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")


def store_has(client: Any, bucket: str, key: str) -> bool:
    """HEAD the object (blocking)."""
    return head(client, bucket, key) is not None


def head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """boto3's HEAD of the object (blocking); None when there is none (404)."""
    try:
        return dict(client.head_object(Bucket=bucket, Key=key))
    except botocore.exceptions.ClientError as e:
        if status_of(e) == 404:
            return None
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


def refuse_xml_bombs(client: Any) -> Any:
    """Have `client` refuse an XML answer that declares a DTD, or is larger than a listing page can
    be, before botocore parses it (botocore's expat would expand its entities up to a hundred times
    the answer); the call raises botocore's ResponseParserError instead. For clients of servers
    that are not ours (origins). botocore's own first look at a 200's body (`_handle_200_error`,
    which parses it whole) goes after this check."""

    def check(response_dict: dict[str, Any], **_: Any) -> None:
        body = response_dict.get("body") or b""
        try:
            xmlsafe.refuse_dtd(body if isinstance(body, bytes) else b"")
        except xmlsafe.XMLRefused as e:
            raise botocore.parsers.ResponseParserError(f"answer refused: {e}") from None

    events = client.meta.events
    events.register_first("before-parse.s3.*", check)
    events.unregister("before-parse.s3.*", botocore.handlers._handle_200_error)
    events.register("before-parse.s3.*", botocore.handlers._handle_200_error)
    return client
