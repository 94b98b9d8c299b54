"""Merged listing (opt-in): ListObjectsV2 and ListObjects through the proxy show the bucket's
objects and, merged in, the objects of every Mirror rule whose origin is an S3 bucket.

The merge is pure (`merge_page`, `merged_listing`): it reads two or more *sides*, each an
async iterator of entries in one key order (the store's listing; an origin bucket's listing,
its keys mapped to the bucket's), and produces one S3 page from them. Sides are read lazily,
a page at a time, so a page of 1000 entries never needs more than a page per side in memory,
whatever the size of the buckets.

- Keys are merged in the store's order and deduplicated; the store's entry wins.
- An origin's key is listed only when a GET of it would be mirrored from that origin: the
  rule's KeyPrefixEquals and KeySuffixEquals hold, no earlier rule claims the key, the key
  reaches the origin unchanged (no '//' collapsing, no '.'/'..' segment), and it is not
  hidden (a tombstone: deleted through the proxy).
- `prefix`, `delimiter` (CommonPrefixes rolled up over all sides, counted against max-keys
  as S3 counts them), `max-keys` (default and cap 1000), `start-after`, `encoding-type=url`
  and, for ListObjects v1, `marker`/NextMarker.
- The continuation token is ours (opaque to clients): the last key or common prefix returned,
  with the prefix and delimiter it belongs to; a later page resumes every side after it.
- The store still decides who may list: every page is answered only after the store let the
  client's own request through (`MergedListings.store_allows`); the proxy then lists the store
  with its own credentials (a client's signature covers its own query, which cannot change).

Rules that are merged: Mirror rules without key rewriting (ReplaceKeyWith and
EnableReplacePrefix unset) and without MirrorHost, whose MirrorURL is an S3 bucket, path
style: `http(s)://host:port/BUCKET/` or `.../BUCKET/SOME/PREFIX/` (then store key K is
origin key `SOME/PREFIX/` + K), signed with MirrorAuth or public. Other rules are simply not
merged. An origin that does not answer like an S3 bucket is left out (logged); one that fails
fails the listing (503), since a listing without it would not be the union.

Key order: S3 lists keys in UTF-8 binary order; SeaweedFS lists them directory by directory
('a/x' before 'a-b'), which is binary order with '/' sorting first. The merge uses the
store's order and checks that every side keeps to it; an origin whose order differs from the
store's cannot be merged page by page, and the listing answers 501 saying so. (Orders are told
by the Server header: 'SeaweedFS' lists in path order, anything else in S3 order.)

Limits: Owner is not listed (fetch-owner is accepted and ignored); only MirrorURL is listed,
never MirrorURLSlave; a rule's IncludeHeader conditions are evaluated against the listing
request's headers; every common prefix that only an origin lists costs one small listing under
it, to make sure a key there can be shown.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

import botocore.exceptions
import httpx
from botocore import UNSIGNED
from botocore.config import Config
from mitmproxy import http

from backorigin.miss.origin import UnsafeKey, origin_key, origin_url
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.s3.addressing import error_code_of
from backorigin.writeback.upload import shared_s3_client

logger = logging.getLogger(__name__)

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000  # S3's default and cap
SIDE_PAGE = 1000  # entries asked of a side per page after its first
CHECK_PAGE = 10  # entries asked first when checking that a common prefix has a key to show
TOKEN_PREFIX = "bo1."
MAX_ERROR_BODY = 64 * 1024
NOT_S3_RETRY = 60.0  # seconds an origin that did not answer like S3 is left out before it is asked again

Order = Literal["s3", "path"]
_SIGNATURE_PARAMS = frozenset({
    "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
    "x-amz-signature", "x-amz-security-token", "x-amz-user-agent", "awsaccesskeyid", "signature", "expires", "x-id",
})
_V1_PARAMS = frozenset({"prefix", "delimiter", "marker", "max-keys", "encoding-type"})
_V2_PARAMS = frozenset({
    "list-type", "prefix", "delimiter", "max-keys", "start-after", "continuation-token", "encoding-type", "fetch-owner",
})


ORDER_NAMES = {"s3": "UTF-8 binary order, as S3", "path": "'/' before every other character, as SeaweedFS"}


def next_page_size(previous: int) -> int:
    """Side pages grow from the client's page size: a page of 7 never waits for 1000 entries
    (SeaweedFS takes ~30 times longer for those than for 8)."""
    return max(1, min(SIDE_PAGE, previous * 2))


def order_key(order: Order) -> Callable[[str], str]:
    """A sort key for `order`: 's3' is UTF-8 binary order (Python compares code points, which
    sorts as UTF-8 bytes do); 'path' sorts '/' before every other character (SeaweedFS)."""
    if order == "path":
        return lambda key: key.replace("/", "\0")
    return lambda key: key


class ListingError(Exception):
    """A listing that cannot be answered; the client gets an S3 error with `status` and `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Entry:
    """An object (Contents) or, with `is_prefix`, a common prefix (CommonPrefixes)."""

    key: str
    is_prefix: bool = False
    size: int = 0
    etag: str = ""
    last_modified: str = ""  # as S3 writes it: 2025-01-31T12:00:00.000Z
    storage_class: str = "STANDARD"


# (prefix, delimiter, start_after, first_page_size) -> the side's entries (objects and common
# prefixes, as its own listing rolls them up) in the side's key order, strictly after start_after
# ("" for none), fetched a page at a time; the first page asks for `first_page_size` entries, the
# next ones for twice as many as the one before, up to 1000 (see next_page_size).
Lister = Callable[[str, str, str, int], AsyncGenerator[Entry, None]]


@dataclass(frozen=True)
class Side:
    """One source of entries, its keys mapped to the bucket's.

    `base` is prepended to a bucket key to give the side's key (an origin's MirrorURL prefix);
    only bucket keys starting with `key_prefix` can come from this side; an object is listed when
    `accepts` (None: always) and not `hidden`. With `filtered`, a common prefix the side lists is
    shown only once a key under it passes those checks (asked lazily: not when the store, or
    another side that needs no check, lists the same common prefix)."""

    lister: Lister
    name: str = "store"
    order: Order = "s3"
    base: str = ""
    key_prefix: str = ""
    accepts: Callable[[str], bool] | None = None
    hidden: Callable[[str], bool] = field(default=lambda key: False)
    filtered: bool = False

    def visible(self, key: str) -> bool:
        return (self.accepts is None or self.accepts(key)) and not self.hidden(key)


# the request -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ListRequest:
    version: int  # 1: ListObjects, 2: ListObjectsV2
    bucket: str


def list_request(request: http.Request, virtual_host_domains: Sequence[str] = ()) -> ListRequest | None:
    """The listing a request asks for: GET /bucket?list-type=2 (v2) or GET /bucket with only
    ListObjects parameters (v1), path-style or virtual-hosted; None for anything else
    (another bucket sub-resource, an object, the service)."""
    if request.method != "GET":
        return None
    path, _, _ = request.path.partition("?")
    bucket = ""
    if virtual_host_domains:
        host = request.pretty_host.lower().rstrip(".")
        for domain in virtual_host_domains:
            if host.endswith("." + domain.lower()):
                if path not in ("", "/"):
                    return None
                bucket = host[: -len(domain) - 1]
                break
    if not bucket:
        name, sep, rest = path.lstrip("/").partition("/")
        if not path.startswith("/") or rest:
            return None
        bucket = unquote(name)
    if not bucket:
        return None
    names = {name.lower() for name in request.query.keys()} - _SIGNATURE_PARAMS
    if request.query.get("list-type") == "2":
        return ListRequest(2, bucket) if names <= _V2_PARAMS else None
    return ListRequest(1, bucket) if names <= _V1_PARAMS else None


def is_list_objects(request: http.Request, virtual_host_domains: Sequence[str] = ()) -> int | None:
    """2 for ListObjectsV2, 1 for ListObjects, None for any other request."""
    listed = list_request(request, virtual_host_domains)
    return listed.version if listed else None


@dataclass(frozen=True)
class ListParams:
    """A listing's parameters, checked; `after` is where this page starts (exclusive)."""

    version: int
    prefix: str = ""
    delimiter: str = ""
    max_keys: int = MAX_KEYS
    start_after: str = ""  # v2 start-after, as given
    continuation: str = ""  # v2 continuation-token, as given
    marker: str = ""  # v1
    url_encoded: bool = False
    after: str = ""


def parse_params(query: Mapping[str, str], version: int | None = None) -> ListParams:
    """The listing parameters of a query (mitmproxy's decoded query); the continuation token is
    kept as given (see decode_token). InvalidArgument for a bad max-keys or encoding-type."""
    if version is None:
        version = 2 if query.get("list-type") == "2" else 1
    raw_max = query.get("max-keys", str(MAX_KEYS))
    if not raw_max.strip().isdigit():
        raise ListingError(400, "InvalidArgument", f"Provided max-keys not an integer or within integer range: {raw_max!r}")
    requested = int(raw_max)
    encoding = query.get("encoding-type", "")
    if encoding and encoding.lower() != "url":
        raise ListingError(400, "InvalidArgument", f"Invalid Encoding Method specified in Request: {encoding!r}")
    params = ListParams(
        version=version, prefix=query.get("prefix", ""), delimiter=query.get("delimiter", ""),
        max_keys=min(requested, MAX_KEYS), url_encoded=bool(encoding),
    )
    if version == 2:
        start_after = query.get("start-after", "")
        return replace(params, start_after=start_after, continuation=query.get("continuation-token", ""), after=start_after)
    marker = query.get("marker", "")
    return replace(params, marker=marker, after=marker)


def roll_up(key: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix `key` rolls up into (S3: up to the first delimiter after the prefix), or None."""
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at == -1 else key[: at + len(delimiter)]


# continuation tokens ------------------------------------------------------------------------


def is_our_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def encode_token(params: ListParams, after: str) -> str:
    """A continuation token: where the next page starts, with the listing it belongs to."""
    payload = json.dumps([params.prefix, params.delimiter, after], separators=(",", ":"), ensure_ascii=False)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str, params: ListParams) -> str:
    """Where the page after the token's starts; InvalidArgument for a token that is not one of
    ours or was made for another prefix or delimiter. (A token grants nothing: the store still
    authorises every page, and a made-up one is no more than a start-after.)"""
    wrong = ListingError(400, "InvalidArgument", "The continuation token provided is incorrect")
    if not is_our_token(token):
        raise wrong
    body = token[len(TOKEN_PREFIX):]
    try:
        prefix, delimiter, after = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        raise wrong from None
    if [prefix, delimiter] != [params.prefix, params.delimiter] or not isinstance(after, str):
        raise wrong
    return after


# the merge ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    entries: tuple[Entry, ...]
    truncated: bool

    @property
    def contents(self) -> list[Entry]:
        return [e for e in self.entries if not e.is_prefix]

    @property
    def common_prefixes(self) -> list[Entry]:
        return [e for e in self.entries if e.is_prefix]


Check = Callable[[], Awaitable[bool]]  # whether a common prefix has a key to show under it
Candidate = tuple[Entry, Check | None]  # None: nothing left to check


class _SideReader:
    """One side's entries for one listing, in bucket keys, rolled up relative to the listing's
    prefix, filtered by the side's rules, common prefixes deduplicated."""

    def __init__(self, side: Side, params: ListParams, page_size: int, order: Order) -> None:
        self.side = side
        self.params = params
        self.page_size = page_size
        self.order = order
        self.sort = order_key(order)

    def _raw(self, prefix: str, delimiter: str, page_size: int) -> AsyncGenerator[Entry, None]:
        after = self.params.after
        return self.side.lister(self.side.base + prefix, delimiter, self.side.base + after if after else "", page_size)

    async def _mapped(self, prefix: str, delimiter: str, page_size: int) -> AsyncGenerator[Entry, None]:
        """The side's raw entries with bucket keys, checked to come in the merge's order."""
        previous: str | None = None
        base = self.side.base
        async with aclosing(self._raw(prefix, delimiter, page_size)) as raw:
            async for entry in raw:
                if not entry.key.startswith(base + prefix):
                    raise ListingError(502, "InternalError", f"{self.side.name} listed {entry.key!r} outside {base + prefix!r}")
                if previous is not None and self.sort(entry.key) < self.sort(previous):
                    raise ListingError(
                        501, "NotImplemented",
                        f"{self.side.name} listed {entry.key!r} after {previous!r}, not in {self.order} order: a merged "
                        "listing needs the store and every S3 origin to list keys in the same order",
                    )
                previous = entry.key
                yield replace(entry, key=entry.key[len(base):])

    def _check(self, prefix: str) -> Check:
        """Whether some key under `prefix` (after the page's start) passes the side's filters."""

        async def has_visible() -> bool:
            async with aclosing(self._mapped(prefix, "", CHECK_PAGE)) as entries:
                async for entry in entries:
                    if not entry.is_prefix and self.side.visible(entry.key):
                        return True
            return False

        return has_visible

    async def entries(self) -> AsyncGenerator[Candidate, None]:
        q, d = self.params.prefix, self.params.delimiter
        rule_prefix = self.side.key_prefix
        if q.startswith(rule_prefix):
            listed = q
        elif rule_prefix.startswith(q):
            listed = rule_prefix  # the rule narrows the listing
        else:
            return  # no key under the listing's prefix can come from this side
        if d and listed != q:
            at = rule_prefix.find(d, len(q))
            if at != -1:  # every key of this side rolls up into one common prefix
                yield Entry(rule_prefix[: at + len(d)], is_prefix=True), self._check(rule_prefix)
                return
        emitted: str | None = None  # the last common prefix yielded
        async with aclosing(self._mapped(listed, d, self.page_size)) as entries:
            async for entry in entries:
                rolled = roll_up(entry.key, q, d)
                if rolled is None:
                    if not entry.is_prefix and self.side.visible(entry.key):
                        yield entry, None
                    continue
                if rolled == emitted:
                    continue
                emitted = rolled
                if not self.side.filtered or (not entry.is_prefix and self.side.visible(entry.key)):
                    yield Entry(rolled, is_prefix=True), None
                else:  # rolled may be longer than the side's own common prefix (a delimiter across the rule's prefix)
                    yield Entry(rolled, is_prefix=True), self._check(rolled if rolled.startswith(listed) else listed)


def start_skips(params: ListParams) -> str | None:
    """What every entry of the page must sort after: the start itself when it is a key or a whole
    common prefix (the last entry of a previous page); None when it lies inside a common prefix,
    which S3 still lists (it has keys after the start)."""
    after = params.after
    if not after:
        return None
    rolled = roll_up(after, params.prefix, params.delimiter) if after.startswith(params.prefix) else None
    return after if rolled in (None, after) else None


async def merge_page(params: ListParams, sides: Sequence[Side], order: Order | None = None) -> Page:
    """One page of the merged listing. `sides[0]` wins a key several sides have (the store);
    `params.after` is where the page starts (exclusive; a continuation token already decoded)."""
    if params.max_keys == 0 or not sides:
        return Page((), False)
    order = order or sides[0].order
    for side in sides:
        if side.order != order:
            raise ListingError(
                501, "NotImplemented",
                f"{side.name} lists keys in {side.order} order, the store in {order} order ({ORDER_NAMES[order]}); a merged "
                "listing needs the same order on every side",
            )
    sort = order_key(order)
    wanted = params.max_keys
    skip = start_skips(params)
    chosen: list[Entry] = []
    async with AsyncExitStack() as stack:
        readers = [
            await stack.enter_async_context(aclosing(_SideReader(side, params, min(SIDE_PAGE, wanted + 1), order).entries()))
            for side in sides
        ]
        heads: list[Candidate | None] = list(await asyncio.gather(*(anext(r, None) for r in readers)))
        while True:  # ends: every pass takes at least one entry off a side, or all are done
            live = [(sort(head[0].key), i) for i, head in enumerate(heads) if head is not None]
            if not live:
                return Page(tuple(chosen), False)
            first = min(live)[0]
            tied = [head for head in heads if head is not None and sort(head[0].key) == first]
            entry = tied[0][0]
            skipped = skip is not None and first <= sort(skip)
            shown = skipped or any(check is None for _, check in tied) or await _any_passes(tied)
            if shown and not skipped and len(chosen) == wanted:
                return Page(tuple(chosen), True)  # before the sides move on: no page is fetched for nothing
            for value, i in live:
                if value == first:
                    heads[i] = await anext(readers[i], None)
            if skipped or not shown:
                continue
            chosen.append(entry)
            skip = entry.key


async def _any_passes(tied: Sequence[Candidate]) -> bool:
    for _, check in tied:
        if check is not None and await check():
            return True
    return False


# rendering ------------------------------------------------------------------------------------


def _text(value: str, encoded: bool) -> str:
    return escape(quote(value, safe="/") if encoded else value)


def render(bucket: str, params: ListParams, page: Page, next_token: str = "") -> bytes:
    """The page as S3's ListBucketResult (v2 with `params.version` 2, else v1)."""
    enc = params.url_encoded
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n', f'<ListBucketResult xmlns="{NAMESPACE}">']

    def add(name: str, value: str | int, encoded: bool = False) -> None:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"<{name}>{_text(text, encoded)}</{name}>")

    add("Name", bucket)
    add("Prefix", params.prefix, enc)
    if params.version == 1:
        add("Marker", params.marker, enc)
    if params.delimiter:
        add("Delimiter", params.delimiter, enc)
    add("MaxKeys", params.max_keys)
    if enc:
        add("EncodingType", "url")
    if params.version == 2:
        add("KeyCount", len(page.entries))
    add("IsTruncated", page.truncated)
    if params.version == 2:
        if params.continuation:
            add("ContinuationToken", params.continuation)
        if page.truncated:
            add("NextContinuationToken", next_token)
        if params.start_after:
            add("StartAfter", params.start_after, enc)
    elif page.truncated and page.entries:
        add("NextMarker", page.entries[-1].key, enc)
    for entry in page.contents:
        parts.append(
            f"<Contents><Key>{_text(entry.key, enc)}</Key><LastModified>{escape(entry.last_modified)}</LastModified>"
            f"<ETag>{escape(entry.etag)}</ETag><Size>{entry.size}</Size>"
            f"<StorageClass>{escape(entry.storage_class)}</StorageClass></Contents>"
        )
    for entry in page.common_prefixes:
        parts.append(f"<CommonPrefixes><Prefix>{_text(entry.key, enc)}</Prefix></CommonPrefixes>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


async def merged_listing(
    request_query: Mapping[str, str], bucket: str, store_lister: Lister | Side, origin_listers: Sequence[Side],
    hidden: Callable[[str], bool] | None = None, version: int | None = None,
) -> bytes:
    """The merged page a ListObjectsV2 (list-type=2) or ListObjects query asks for, as XML.

    `store_lister` lists the bucket itself (a Lister, taken to list in S3 order, or a Side);
    `origin_listers` are the origins' sides (see `origin_side`), in RuleNumber order; `hidden`
    hides origin keys (tombstones). Raises ListingError for a request S3 would refuse."""
    params = parse_params(request_query, version)
    if params.continuation:
        params = replace(params, after=decode_token(params.continuation, params))
    store = store_lister if isinstance(store_lister, Side) else Side(store_lister)
    origins = [replace(side, hidden=hidden) if hidden is not None else side for side in origin_listers]
    page = await merge_page(params, [store, *origins], store.order)
    token = encode_token(params, page.entries[-1].key) if page.truncated and params.version == 2 else ""
    return render(bucket, params, page, token)


# the rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OriginBucket:
    """Where a Mirror rule's objects are, as an S3 bucket: MirrorURL = endpoint/bucket/base."""

    endpoint: str
    bucket: str
    base: str

    @classmethod
    def of(cls, rule: RoutingRule) -> OriginBucket | None:
        """None for a rule that is not merged (not a Mirror, rewrites keys, sets MirrorHost, or
        its MirrorURL names no bucket)."""
        action = rule.Redirect
        if not action.is_mirror or action.MirrorURL is None or action.ReplaceKeyWith is not None:
            return None
        if action.EnableReplacePrefix or action.MirrorHost:
            return None
        parts = urlsplit(action.MirrorURL)
        bucket, _, base = unquote(parts.path).lstrip("/").partition("/")
        if not bucket:
            return None
        return cls(f"{parts.scheme}://{parts.netloc}", bucket, base)


def _claims_before(rule: RoutingRule, others: Sequence[RoutingRule]) -> list[RoutingRule]:
    """Rules a GET of a key would reach before `rule` (RuleBook.decide_after_store's order)."""
    earlier = []
    for other in others:
        if other is rule:
            break
        if other.applies_to("GET") and other.status_condition in (None, 404):
            earlier.append(other)
    return earlier


def origin_side(
    rule: RoutingRule, rules: Sequence[RoutingRule], lister: Lister, header: Callable[[str], str | None] = lambda name: None,
    order: Order = "s3",
) -> Side | None:
    """The side of a merged listing that `rule`'s origin contributes; None when the rule is not
    merged or its header conditions do not hold for this request. `rules` are the bucket's rules
    in RuleNumber order; a key an earlier rule claims is not this origin's."""
    where = OriginBucket.of(rule)
    if where is None or not all(h.holds(header(h.Key)) for h in rule.Condition.IncludeHeader):
        return None
    earlier = _claims_before(rule, rules)
    mirror_url = rule.Redirect.MirrorURL
    assert mirror_url is not None

    def accepts(key: str) -> bool:
        if not rule.matches_request(key, header) or any(other.matches_request(key, header) for other in earlier):
            return False
        if origin_key(rule, key) != key:
            return False  # a GET would ask the origin for another key ('//' collapsed)
        try:
            origin_url(mirror_url, key)
        except UnsafeKey:
            return False
        return True

    return Side(lister, name=f"RuleNumber {rule.RuleNumber}'s origin {mirror_url}", order=order, base=where.base,
                key_prefix=rule.Condition.KeyPrefixEquals, accepts=accepts, filtered=True)


# I/O: listing an S3 bucket with boto3 ---------------------------------------------------------


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


def origin_client(endpoint: str, rule: RoutingRule) -> Any:
    """A boto3 client for a rule's origin: signed with MirrorAuth (SigV4), else unsigned. Like the
    addon's origin fetches, it reads no credentials, config or proxy variables of this machine."""
    import boto3
    import botocore.session

    auth = rule.Redirect.MirrorAuth
    session = botocore.session.Session()
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    config = Config(
        s3={"addressing_style": "path"}, retries={"total_max_attempts": 2}, connect_timeout=5, read_timeout=30,
        signature_version="s3v4" if auth else UNSIGNED, proxies={},
    )
    return boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=endpoint, region_name=auth.Region if auth else "us-east-1", config=config,
        aws_access_key_id=auth.AccessKeyId if auth else None,
        aws_secret_access_key=auth.AccessKeySecret.get_secret_value() if auth else None,
    )


def _not_s3(error: Exception) -> bool:
    """An answer that is not an S3 bucket's (an HTML 404, a body that is not XML)."""
    if isinstance(error, botocore.exceptions.ResponseParserError):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code", "")).isdigit()
    return False


def _error_response(error: ListingError, bucket: str) -> http.Response:
    request_id = uuid.uuid4().hex[:24].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message>"
        f"<BucketName>{escape(bucket)}</BucketName><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    return http.Response.make(error.status, body, {"content-type": "application/xml", "x-amz-request-id": request_id})


class MergedListings:
    """The addon's merged listings: boto3 clients for the store and the origins (cached), the key
    order of each endpoint (cached), and a pooled HTTP client that asks the store whether it lets
    the client list. See `answer`; `aclose` at shutdown."""

    def __init__(self, store_client: Callable[[str], Any] | None = None, verify: bool | str = True) -> None:
        """`store_client(endpoint)`: a boto3 client with the proxy's own credentials (default:
        writeback.shared_s3_client, one per endpoint for the process); `verify`: TLS verification of the store, as
        for storeprobe.StoreProbe (connections.upstream_verification)."""
        self.store_client = store_client or shared_s3_client
        self._origin_clients: dict[tuple[str, str, str, str], Any] = {}
        self._orders: dict[str, Order] = {}
        self._not_s3: dict[str, float] = {}  # origin endpoint/bucket -> when it last did not answer like S3
        self.verify = verify
        self._http: dict[str | None, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        for client in self._http.values():
            await client.aclose()
        self._http.clear()

    def origin_client(self, endpoint: str, rule: RoutingRule) -> Any:
        auth = rule.Redirect.MirrorAuth
        cache_key = (endpoint, auth.Region, auth.AccessKeyId, auth.AccessKeySecret.get_secret_value()) if auth else (endpoint, "", "", "")
        if cache_key not in self._origin_clients:
            self._origin_clients[cache_key] = origin_client(endpoint, rule)
        return self._origin_clients[cache_key]

    async def _order(self, where: str, client: Any, bucket: str) -> Order:
        if where not in self._orders:
            self._orders[where] = await asyncio.to_thread(detect_order, client, bucket)
        return self._orders[where]

    async def sides(
        self, bucket: str, rules: Sequence[RoutingRule], store_endpoint: str, header: Callable[[str], str | None]
    ) -> list[Side]:
        """The store's side and the side of every merged rule's origin that answers like S3, in
        RuleNumber order; just the store's when no rule is merged."""
        store = self.store_client(store_endpoint)
        store_order = await self._order(store_endpoint, store, bucket)
        sides = [Side(boto3_lister(store, bucket, store_order), order=store_order)]
        for rule in rules:
            where = OriginBucket.of(rule)
            if where is None:
                continue
            name = f"{where.endpoint}/{where.bucket}"
            if time.monotonic() - self._not_s3.get(name, -NOT_S3_RETRY) < NOT_S3_RETRY:
                continue
            client = self.origin_client(where.endpoint, rule)
            try:
                order = await self._order(name, client, where.bucket)
            except Exception as e:
                if _not_s3(e):
                    logger.warning("merged listing leaves out %s (RuleNumber %d): it does not answer like an S3 bucket: %s",
                                   name, rule.RuleNumber, e)
                    self._not_s3[name] = time.monotonic()
                    continue
                raise ListingError(503, "ServiceUnavailable", f"cannot list the origin {name}: {e}") from e
            side = origin_side(rule, rules, boto3_lister(client, where.bucket, order), header, order)
            if side is not None:
                sides.append(side)
        return sides

    async def store_allows(self, request: http.Request, via: str | None, continuing: bool) -> bool:
        """Whether the store lets the client list: the client's own request, sent as is (so its
        signature holds). 200 says yes; on a page after the first, so does a 400 InvalidArgument
        (stores that check the signature and the right to list before they read the token do not
        know ours; SeaweedFS reads it as a start-after and answers 200). Anything else, or no
        answer, is the store's to give: False."""
        if via not in self._http:
            self._http[via] = httpx.AsyncClient(verify=self.verify, trust_env=False, follow_redirects=False,
                                                timeout=httpx.Timeout(30.0, connect=5.0), proxy=via)
        headers = [(k, v) for k, v in request.headers.fields if k.lower() not in (b"connection", b"keep-alive")]
        url = httpx.URL(scheme=request.scheme, host=request.host, port=request.port,
                        raw_path=request.path.encode("utf-8", "surrogateescape"))
        try:
            async with self._http[via].stream("GET", url, headers=headers) as answer:
                if answer.status_code == 200:
                    return True
                if not continuing or answer.status_code != 400:
                    return False
                body = b""
                async for chunk in answer.aiter_raw():
                    body += chunk
                    if len(body) > MAX_ERROR_BODY:
                        return False
                return error_code_of(body) == "InvalidArgument"
        except httpx.HTTPError as e:
            logger.warning("cannot ask the store about %s: %s: %s", request.pretty_url, type(e).__name__, e)
            return False

    async def answer(
        self, request: http.Request, rulebook: RuleBook, store_endpoint: str, via: str | None = None,
        tombstoned: Callable[[str, str], Iterable[str]] | None = None, virtual_host_domains: Sequence[str] = (),
    ) -> http.Response | None:
        """The merged answer to a ListObjects(V2) request, or None: not a listing, no merged rule
        for its bucket, a continuation token that is not ours (the store's own), or the store did
        not let the client list (then mitmproxy sends the request on and the store answers it).
        Every page is answered only once the store let the client's own request through
        (`store_allows`): the store decides who may list, the proxy lists with its own credentials.

        `via`: mitmproxy's upstream proxy (connections.upstream_proxy); `tombstoned(bucket, prefix)`:
        the keys under `prefix` deleted through the proxy, which origins do not list (it runs in a
        thread, once per page: it may block)."""
        listed = list_request(request, virtual_host_domains)
        if listed is None:
            return None
        rules = rulebook.rules_for(listed.bucket)
        if not any(OriginBucket.of(rule) for rule in rules):
            return None
        token = request.query.get("continuation-token", "") if listed.version == 2 else ""
        if token and not is_our_token(token):
            return None  # the store's own token (a listing begun before merging was on): the store answers
        if not await self.store_allows(request, via, continuing=bool(token)):
            return None
        query = {name: value for name, value in reversed(request.query.items(multi=True))}  # the first of each wins
        try:
            hidden = None
            if tombstoned is not None:
                prefix = query.get("prefix", "")
                hidden = (await asyncio.to_thread(lambda: frozenset(tombstoned(listed.bucket, prefix)))).__contains__
            sides = await self.sides(listed.bucket, rules, store_endpoint, request.headers.get)
            body = await merged_listing(query, listed.bucket, sides[0], sides[1:], hidden, version=listed.version)
        except ListingError as e:
            logger.warning("merged listing of %s: %s", listed.bucket, e.message)
            return _error_response(e, listed.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            logger.warning("merged listing of %s failed: %s", listed.bucket, e)
            return _error_response(ListingError(503, "ServiceUnavailable", f"merged listing failed: {e}"), listed.bucket)
        return http.Response.make(200, body, {"content-type": "application/xml",
                                              "x-amz-request-id": uuid.uuid4().hex[:24].upper()})
