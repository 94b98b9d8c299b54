"""Client answers that do not come from the store, and S3's XML errors. Pure: values in,
values or mitmproxy Responses out.

`Reply` is an answer independent of how it is sent: the loopback miss server streams it,
the hooks turn it into a mitmproxy Response (`to_response`). Bodies are passed through byte
for byte: `http.Response.make` would re-encode a gzip body, so responses are built from raw
content with explicit framing headers.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from mitmproxy import http
from mitmproxy.net.http import status_codes

from backorigin.decision import Outcome
from backorigin.s3.addressing import ObjectRef

Headers = list[tuple[str, str]]
_ERROR_CODE = re.compile(rb"<Code>\s*([A-Za-z]+)\s*</Code>")


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = None  # the object's bytes, when they are streamed
    outcome: Outcome | None = None  # for the flow's Decision
    detail: str = ""
    origin_status: int | None = None
    failure: str = ""  # why a mirror failed, in a few words (the Decision's `failure`)

    def has_length(self) -> bool:
        return any(name.lower() == "content-length" for name, _ in self.headers)


def error_code_of(body: bytes) -> str | None:
    """The <Code> of an S3 XML error body, if it is one."""
    match = _ERROR_CODE.search(body)
    return match.group(1).decode() if match else None


def new_request_id() -> str:
    return uuid.uuid4().hex[:24].upper()


def error_body(code: str, message: str, ref: ObjectRef, request_id: str) -> bytes:
    """An S3-style XML error document, as the store itself would send (no <Key> for a bucket call)."""
    key = f"<Key>{escape(ref.key)}</Key>" if ref.key else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<BucketName>{escape(ref.bucket)}</BucketName>{key}<RequestId>{request_id}</RequestId></Error>"
    ).encode()


def s3_error(status: int, code: str, message: str, ref: ObjectRef, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    """An S3-style XML error, as the store itself would send it."""
    request_id = new_request_id()
    headers = [("content-type", "application/xml"), ("x-amz-request-id", request_id), *extra]
    return Reply(status, headers, error_body(code, message, ref, request_id))


def mirror_failed(ref: ObjectRef, reason: str, detail: str = "") -> Reply:
    """424 MirrorFailed with a short `reason` a client may read; the `detail` (addresses, errors)
    only goes to the flow's decision and the log."""
    reply = s3_error(424, "MirrorFailed", f"Mirror back-to-origin failed: {reason}", ref)
    reply.outcome, reply.detail = Outcome.MIRROR_FAILED, detail or reason
    return reply


def no_such_key(ref: ObjectRef) -> Reply:
    """The store's own 404 for a missing key, for when the store's answer is not at hand."""
    return s3_error(404, "NoSuchKey", "The specified key does not exist.", ref)


def slow_down(ref: ObjectRef) -> Reply:
    """503 SlowDown, which every S3 SDK retries: for a miss that can only be answered by a retry."""
    return s3_error(503, "SlowDown", "Please reduce your request rate.", ref, [("retry-after", "1")])


def redirect(status: int, location: str, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    """A 3xx to `location`: a redirect rule's, or the origin's when MirrorFollowRedirect is false."""
    return Reply(status, [("location", location), *extra])


def to_response(request: http.Request, reply: Reply) -> http.Response:
    """A mitmproxy Response for a reply whose body is at hand. A Content-Length in the reply
    stands (a HEAD answer has the object's). No HEAD, 204 or 304 answer carries a body: a HEAD's
    Content-Length is the body's a GET would get, a 204 or 304 has none."""
    assert reply.stream is None, "a streamed reply goes through the miss server"
    bodiless = request.method == "HEAD" or reply.status in (204, 304)
    framing = [] if reply.has_length() or reply.status in (204, 304) else [("content-length", str(len(reply.body)))]
    now = time.time()
    return http.Response(
        http_version=request.http_version.encode(),
        status_code=reply.status,
        reason=status_codes.RESPONSES.get(reply.status, "").encode(),
        headers=http.Headers([(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in reply.headers + framing]),
        content=b"" if bodiless else reply.body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
    )
