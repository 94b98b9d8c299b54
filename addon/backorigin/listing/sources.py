"""The sides a merged listing reads: an S3 bucket listed with boto3 (the store's, with the proxy's
own credentials; an origin's, with its rule's MirrorAuth or unsigned), and the side a Mirror
rule's origin contributes, which lists a key only when a GET of it would be mirrored from that
origin (rules.plan.plan_get), under the same key."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import botocore.parsers
from mitmproxy import http

from backorigin.listing.merge import SIDE_PAGE, Lister, Side, next_page_size
from backorigin.listing.order import Order, PageLister, order_key
from backorigin.listing.request import Entry, ListingError
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.rules.plan import Act, plan_get
from backorigin.rules.targets import NotAnS3Origin, OriginBucket
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.clients import foreign_s3_client

logger = logging.getLogger(__name__)


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


def page_entries(page: Mapping[str, Any]) -> list[Entry]:
    """A ListObjectsV2 answer (boto3's dict) as entries, as it lists them: objects, then common prefixes."""
    entries = [
        Entry(item["Key"], size=int(item.get("Size", 0)), etag=item.get("ETag", ""),
              last_modified=_timestamp(item.get("LastModified")), storage_class=item.get("StorageClass") or "STANDARD")
        for item in page.get("Contents", [])
    ]
    return entries + [Entry(item["Prefix"], is_prefix=True) for item in page.get("CommonPrefixes", [])]


def boto3_pages(client: Any, bucket: str) -> PageLister:
    """A PageLister over ListObjectsV2 of `bucket` with a boto3 client, each call in a thread."""

    async def pages(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[list[Entry], None]:
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max(1, min(first_page, SIDE_PAGE))}
        if delimiter:
            args["Delimiter"] = delimiter
        if start_after:
            args["StartAfter"] = start_after
        seen_tokens: set[str] = set()
        while True:  # ends: every page has a new continuation token, or it is the last
            page = await asyncio.to_thread(client.list_objects_v2, **args)
            yield page_entries(page)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return
            if not token or token in seen_tokens:
                raise ListingError(502, "InternalError", f"s3://{bucket}/{prefix}: truncated listing without a new continuation token")
            seen_tokens.add(token)
            args.pop("StartAfter", None)
            args.update(ContinuationToken=token, MaxKeys=next_page_size(args["MaxKeys"]))

    return pages


def in_order(pages: PageLister, order: Order) -> Lister:
    """A Lister of a side known to list in `order`: each page's objects and common prefixes merged in it."""
    sort = order_key(order)

    async def entries(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[Entry, None]:
        async with aclosing(pages(prefix, delimiter, start_after, first_page)) as listed:
            async for page in listed:
                for entry in sorted(page, key=lambda entry: sort(entry.key)):
                    yield entry

    return entries


PROBE_NAME = ".backorigin-order-probe-"  # + a random part; see probe_order


def probe_order(client: Any, bucket: str) -> Order:
    """The order a store lists keys in, asked (blocking): two empty objects that the two orders
    list the other way round, written create-only under a name with a random part, listed, and
    deleted, with the folder SeaweedFS made for one of them (see listing.order)."""
    base = f"{PROBE_NAME}{uuid.uuid4().hex}"
    pair = (base + "-", base + "/x")  # S3 lists the first first; SeaweedFS the second
    written: list[str] = []
    try:
        for key in pair:
            client.put_object(Bucket=bucket, Key=key, Body=b"", IfNoneMatch="*")
            written.append(key)
        listed = [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=base).get("Contents", [])]
    finally:
        for key in [*written, base + "/"]:
            try:
                client.delete_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as e:
                logger.warning("could not delete the order probe s3://%s/%s: %s", bucket, key, e)
    if sorted(listed) != sorted(pair):
        raise ListingError(503, "ServiceUnavailable", f"the store listed {listed!r} for its order probe {list(pair)!r}")
    return "s3" if listed[0] == pair[0] else "path"


def origin_s3_client(endpoint: str, rule: RoutingRule) -> Any:
    """A boto3 client for a rule's S3 origin: signed with MirrorAuth (SigV4), else unsigned."""
    auth = rule.Redirect.MirrorAuth
    if auth is None:
        return foreign_s3_client(endpoint)
    return foreign_s3_client(endpoint, auth.Region, (auth.AccessKeyId, auth.AccessKeySecret.get_secret_value()))


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
