"""Client responses built from an origin result. Pure: values in, mitmproxy Responses out.

Bodies are passed through byte for byte: `http.Response.make` would re-encode a gzip
body, so responses are built from raw content with explicit framing headers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
import time
from urllib.parse import quote, unquote

from mitmproxy import http
from mitmproxy.net.http import status_codes

from addon.integrity import decimal
from addon.origin import OriginResult
from addon.s3 import ObjectRef, error_body, new_request_id

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


_PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F)))


def oss_tag(origin_url: str) -> str:
    """x-oss-tag: "MIRROR " + the url-decoded origin URL, kept to printable ASCII."""
    return "MIRROR " + quote(unquote(origin_url), safe=_PRINTABLE_ASCII)


class RangeNotSatisfiable(ValueError):
    pass


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single byte range; None when the header does not apply
    (absent, malformed, several ranges: S3 answers those with the whole object)."""
    match = _RANGE.match(header.strip())
    if not match or match.group(0) == "bytes=-":
        return None
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        if int(last) == 0:
            raise RangeNotSatisfiable(header)
        return max(size - int(last), 0), size - 1
    if int(first) >= size:
        raise RangeNotSatisfiable(header)
    end = min(int(last), size - 1) if last else size - 1
    return (int(first), end) if int(first) <= end else None


def _response(
    request: http.Request,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    chunked: bool = False,
    length: int | None = None,
) -> http.Response:
    """`length` overrides Content-Length for a HEAD answer, which has no body to count."""
    framing = (
        [("transfer-encoding", "chunked")]
        if chunked and request.http_version == "HTTP/1.1"
        else [("content-length", str(len(body) if length is None else length))]
    )
    now = time.time()
    return http.Response(
        http_version=request.http_version.encode(),
        status_code=status,
        reason=status_codes.RESPONSES.get(status, "").encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in headers + framing]),
        content=body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
    )


def _object_headers(result: OriginResult, extra: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*result.storable_headers.items(), *extra, ("accept-ranges", "bytes"), ("x-oss-tag", oss_tag(result.url))]


def mirrored(
    request: http.Request, ref: ObjectRef, result: OriginResult, extra: Sequence[tuple[str, str]] = ()
) -> http.Response:
    """200 with the origin's bytes and storable headers, or 206/416 for a Range request."""
    size = len(result.body)
    headers = _object_headers(result, extra)
    try:
        wanted = byte_range(request.headers.get("range", ""), size)
    except RangeNotSatisfiable:
        return s3_error(
            request, 416, "InvalidRange", "The requested range is not satisfiable", ref,
            extra=[("content-range", f"bytes */{size}")],
        )
    if wanted is None:
        return _response(request, 200, headers, result.body, chunked=result.chunked)
    first, last = wanted
    headers.append(("content-range", f"bytes {first}-{last}/{size}"))
    return _response(request, 206, headers, result.body[first : last + 1])


def mirrored_head(request: http.Request, result: OriginResult, extra: Sequence[tuple[str, str]] = ()) -> http.Response:
    """MirrorAllowHeadObject: the origin's HEAD answer, shaped like a store's HEAD."""
    declared = result.header("content-length")
    length = decimal(declared) or 0
    return _response(request, 200, _object_headers(result, extra), b"", length=length)


def transparent(request: http.Request, result: OriginResult) -> http.Response:
    """TransparentMirrorResponseCodes: the origin's status and body instead of 424."""
    return _response(request, result.status or 502, list(result.storable_headers.items()), result.body)


def redirect(request: http.Request, status: int, location: str, extra: Sequence[tuple[str, str]] = ()) -> http.Response:
    """A 3xx to `location`: a redirect rule's, or the origin's when MirrorFollowRedirect is false."""
    return _response(request, status, [("location", location), *extra], b"")


def no_such_key(request: http.Request, ref: ObjectRef) -> http.Response:
    """The store's own 404 for a missing key, for when the store's answer is not at hand."""
    return s3_error(request, 404, "NoSuchKey", "The specified key does not exist.", ref)


def mirror_failed(request: http.Request, ref: ObjectRef, reason: str) -> http.Response:
    return s3_error(request, 424, "MirrorFailed", f"Mirror back-to-origin failed: {reason}", ref)


def s3_error(
    request: http.Request,
    status: int,
    code: str,
    message: str,
    ref: ObjectRef,
    extra: list[tuple[str, str]] | None = None,
) -> http.Response:
    request_id = new_request_id()
    headers = [("content-type", "application/xml"), ("x-amz-request-id", request_id), *(extra or [])]
    return _response(request, status, headers, error_body(code, message, ref, request_id))
