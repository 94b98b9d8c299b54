"""S3 request addressing and S3-style error bodies.

Pure functions over mitmproxy requests/responses: which object a request names,
whether it is a plain GetObject, and whether the store's answer means "no such key".
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from mitmproxy import http

# Query parameters that turn an object URL into a different API call (ACL, tags,
# multipart parts, a specific version...). Such GETs are never mirrored.
SUBRESOURCES = frozenset(
    {
        "acl",
        "attributes",
        "legal-hold",
        "partNumber",
        "restore",
        "retention",
        "select",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "symlink",
        "objectMeta",
        "x-oss-process",
    }
)

_ERROR_CODE = re.compile(rb"<Code>\s*([A-Za-z]+)\s*</Code>")


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str


def object_ref(request: http.Request, virtual_host_domains: Sequence[str] = ()) -> ObjectRef | None:
    """The object a request names, or None for bucket/service calls: virtual-hosted style
    (`bucket.<domain>/key`, for the domains given) or path-style (`/bucket/key`)."""
    path = request.path.split("?", 1)[0]
    if not path.startswith("/"):
        return None
    if virtual_host_domains:  # pretty_host parses the authority: only when it can matter
        host = request.pretty_host.lower().rstrip(".")
        for domain in virtual_host_domains:
            if host.endswith("." + domain.lower()):
                bucket = host[: -len(domain) - 1]
                return ObjectRef(bucket, unquote(path[1:])) if path[1:] else None
    bucket, sep, raw_key = path[1:].partition("/")
    if not bucket or not sep or not raw_key:
        return None
    return ObjectRef(unquote(bucket), unquote(raw_key))


def is_plain_object_call(request: http.Request) -> bool:
    """True unless a sub-resource parameter makes the request another API call."""
    return "?" not in request.path or not any(name in SUBRESOURCES for name in request.query.keys())


def write_kind(request: http.Request) -> str | None:
    """What a write does to objects: "delete" (DeleteObject), "delete-many" (DeleteObjects),
    "create" (PutObject, CopyObject, CompleteMultipartUpload); None for anything else."""
    method = request.method
    if method == "GET" or method == "HEAD":  # the hit path: nothing more to look at
        return None
    if method == "DELETE":
        return "delete" if is_plain_object_call(request) else None
    if method == "POST" and "?" in request.path:
        names = set(request.query.keys())
        if names == {"delete"}:
            return "delete-many"
        if "uploadId" in names:
            return "create"
    if method == "PUT" and is_plain_object_call(request):
        return "create"
    return None


def bucket_of(request: http.Request, virtual_host_domains: Sequence[str] = ()) -> str | None:
    """The bucket a bucket-level request (`/bucket?delete`) names."""
    if virtual_host_domains:
        host = request.pretty_host.lower().rstrip(".")
        for domain in virtual_host_domains:
            if host.endswith("." + domain.lower()):
                return host[: -len(domain) - 1]
    bucket = request.path.split("?", 1)[0].lstrip("/").split("/", 1)[0]
    return unquote(bucket) or None


def keys_in(xml: bytes, element: str) -> list[str]:
    """The <Key> of every `element` in a DeleteObjects request or answer (<Object>, <Deleted>, <Error>)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return []
    return [key.text or "" for node in root.iter() if _local(node.tag) == element
            for key in node if _local(key.tag) == "Key"]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def error_code_of(body: bytes) -> str | None:
    """The <Code> of an S3 XML error body, if it is one."""
    match = _ERROR_CODE.search(body)
    return match.group(1).decode() if match else None


def error_code(response: http.Response) -> str | None:
    return error_code_of(response.get_content(strict=False) or b"")


def error_body(code: str, message: str, ref: ObjectRef, request_id: str) -> bytes:
    """An S3-style XML error document, as the store itself would send."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<BucketName>{escape(ref.bucket)}</BucketName><Key>{escape(ref.key)}</Key>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()


def new_request_id() -> str:
    return uuid.uuid4().hex[:24].upper()
