"""A listing request (ListObjects, ListObjectsV2): which it is, its parameters checked as S3
checks them, our continuation tokens, and the page rendered as S3's ListBucketResult. Pure."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import quote
from xml.sax.saxutils import escape

from mitmproxy import http

from backorigin.s3.addressing import is_store_parameter
from backorigin.s3.reading import Reading

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000  # S3's default and cap
TOKEN_PREFIX = "bo1."
_V1_PARAMS = frozenset({"prefix", "delimiter", "marker", "max-keys", "encoding-type"})
_V2_PARAMS = frozenset({
    "list-type", "prefix", "delimiter", "max-keys", "start-after", "continuation-token", "encoding-type", "fetch-owner",
})


@dataclass(frozen=True)
class Entry:
    """An object (Contents) or, with `is_prefix`, a common prefix (CommonPrefixes)."""

    key: str
    is_prefix: bool = False
    size: int = 0
    etag: str = ""
    last_modified: str = ""  # as S3 writes it: 2025-01-31T12:00:00.000Z
    storage_class: str = "STANDARD"


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


class ListingError(Exception):
    """A listing that cannot be answered; the client gets an S3 error with `status` and `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ListRequest:
    version: int  # 1: ListObjects, 2: ListObjectsV2
    bucket: str


def list_request(request: http.Request, reading: Reading) -> ListRequest | None:
    """The listing a request asks for: GET /bucket?list-type=2 (v2) or GET /bucket with only
    ListObjects parameters (v1), path-style or virtual-hosted (the store's `reading` of it); None
    for anything else (another bucket sub-resource, an object, the service)."""
    if request.method != "GET" or not reading.bucket or reading.key:
        return None
    names = {name for name in request.query.keys() if not is_store_parameter(name)}
    if request.query.get("list-type") == "2":
        return ListRequest(2, reading.bucket) if names <= _V2_PARAMS else None
    return ListRequest(1, reading.bucket) if names <= _V1_PARAMS else None


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


