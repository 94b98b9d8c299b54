"""The sides a merged listing reads: an S3 bucket listed with boto3 (the store's, with the proxy's
own credentials; an origin's, with its rule's MirrorAuth or unsigned), and the side a Mirror
rule's origin contributes, which lists a key only when a GET of it would be mirrored from that
origin (rules.plan.plan_get), under the same key."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions
import botocore.parsers
import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from mitmproxy import http

from backorigin.listing.merge import SIDE_PAGE, Lister, Order, Side, next_page_size, order_key
from backorigin.listing.request import Entry, ListingError
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.rules.plan import Act, plan_get
from backorigin.rules.targets import NotAnS3Origin, OriginBucket
from backorigin.s3.addressing import ObjectRef


def origin_side(rule: RoutingRule, book: RuleBook, bucket: str, lister: Lister, request: http.Request,
                order: Order = "s3") -> Side | None:
    """The side of a merged listing of `bucket` that `rule`'s origin contributes; None when the rule
    is not merged or its header conditions do not hold for this listing `request`. A key is listed
    when a GET of it, with the listing request's headers, would be mirrored by this rule from the
    origin's key of the same name."""
    try:
        where = OriginBucket.of(rule)
    except NotAnS3Origin:
        return None
    if not all(h.holds(request.headers.get(h.Key)) for h in rule.Condition.IncludeHeader):
        return None

    def accepts(key: str) -> bool:
        plan = plan_get(book, ObjectRef(bucket, key), request, 404)
        return plan.act is Act.MIRROR and plan.rule is rule and plan.origin is not None and plan.origin.key == key

    return Side(lister, name=f"RuleNumber {rule.RuleNumber}'s origin {rule.Redirect.MirrorURL}", order=order,
                base=where.base, key_prefix=rule.Condition.KeyPrefixEquals, accepts=accepts, filtered=True)


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return str(value or "")


def page_entries(page: Mapping[str, Any], order: Order) -> list[Entry]:
    """A ListObjectsV2 answer (boto3's dict) as entries, objects and common prefixes in `order`."""
    entries = [
        Entry(item["Key"], size=int(item.get("Size", 0)), etag=item.get("ETag", ""),
              last_modified=_timestamp(item.get("LastModified")), storage_class=item.get("StorageClass") or "STANDARD")
        for item in page.get("Contents", [])
    ]
    entries += [Entry(item["Prefix"], is_prefix=True) for item in page.get("CommonPrefixes", [])]
    sort = order_key(order)
    return sorted(entries, key=lambda entry: sort(entry.key))


def boto3_lister(client: Any, bucket: str, order: Order = "s3") -> Lister:
    """A Lister over ListObjectsV2 of `bucket` with a boto3 client, each call in a thread."""

    async def entries(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[Entry, None]:
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max(1, min(first_page, SIDE_PAGE))}
        if delimiter:
            args["Delimiter"] = delimiter
        if start_after:
            args["StartAfter"] = start_after
        seen_tokens: set[str] = set()
        while True:  # ends: every page has a new continuation token, or it is the last
            page = await asyncio.to_thread(client.list_objects_v2, **args)
            for entry in page_entries(page, order):
                yield entry
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return
            if not token or token in seen_tokens:
                raise ListingError(502, "InternalError", f"s3://{bucket}/{prefix}: truncated listing without a new continuation token")
            seen_tokens.add(token)
            args.pop("StartAfter", None)
            args.update(ContinuationToken=token, MaxKeys=next_page_size(args["MaxKeys"]))

    return entries


def detect_order(client: Any, bucket: str) -> Order:
    """'path' for SeaweedFS (told by its Server header), else 's3' (blocking)."""
    page = client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    server = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", "")
    return "path" if "seaweedfs" in server.lower() else "s3"


def origin_s3_client(endpoint: str, rule: RoutingRule) -> Any:
    """A boto3 client for a rule's S3 origin: signed with MirrorAuth (SigV4), else unsigned. Like the
    origin fetches, it reads no credentials, config or proxy variables of this machine."""
    auth = rule.Redirect.MirrorAuth
    session = botocore.session.Session()
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    config = Config(
        s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5,
        read_timeout=30, signature_version="s3v4" if auth else UNSIGNED, proxies={},
    )
    return boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=endpoint, region_name=auth.Region if auth else "us-east-1", config=config,
        aws_access_key_id=auth.AccessKeyId if auth else None,
        aws_secret_access_key=auth.AccessKeySecret.get_secret_value() if auth else None,
    )


def not_s3(error: Exception) -> bool:
    """An answer that is not an S3 bucket's (an HTML 404, a body that is not XML)."""
    if isinstance(error, botocore.parsers.ResponseParserError):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code", "")).isdigit()
    return False


def without(lister: Lister, prefix: str) -> Lister:
    """`lister`'s entries but those under `prefix`, keys and common prefixes (the fleet's leases in
    the store's own listing: miss.leases)."""

    async def listed(under: str, delimiter: str, after: str, page_size: int) -> AsyncGenerator[Entry, None]:
        async with aclosing(lister(under, delimiter, after, page_size)) as entries:
            async for entry in entries:
                if not entry.key.startswith(prefix):
                    yield entry

    return listed
