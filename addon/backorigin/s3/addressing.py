"""S3 request addressing: which bucket and object a request names, and what kind of call it is.

Pure functions over mitmproxy requests. Path-style (`/bucket/key`) and virtual-hosted style
(`bucket.DOMAIN/key`, for the domains given) are read by one parser, `target`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote

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
# Query parameters of the client's exchange with the store, never of the object: signatures and
# their tokens (SigV2, SigV4's X-Amz-*, OSS), and botocore's operation name (x-id).
_STORE_PARAMETERS = frozenset({"signature", "ossaccesskeyid", "awsaccesskeyid", "expires", "security-token", "x-id"})


def is_store_parameter(name: str) -> bool:
    lowered = name.lower()
    return lowered in _STORE_PARAMETERS or lowered.startswith("x-amz-")


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str


def virtual_host_bucket(host: str, domains: Sequence[str]) -> tuple[str, str] | None:
    """(bucket, domain) when `host` is bucket.DOMAIN for one of the domains."""
    host = host.lower().rstrip(".")
    for domain in domains:
        if host.endswith("." + domain.lower()):
            return host[: -len(domain) - 1], domain
    return None


def target(request: http.Request, domains: Sequence[str] = ()) -> ObjectRef | None:
    """The bucket and the (decoded) key a request's URL names; the key is "" for a bucket call,
    the bucket "" for the service. None for a request whose target is not a path."""
    path = request.path.split("?", 1)[0]
    if not path.startswith("/"):
        return None
    if domains:  # pretty_host parses the authority: only when it can matter
        found = virtual_host_bucket(request.pretty_host, domains)
        if found is not None:
            return ObjectRef(found[0], unquote(path[1:]))
    bucket, _, key = path[1:].partition("/")
    return ObjectRef(unquote(bucket), unquote(key))


def object_ref(request: http.Request, domains: Sequence[str] = ()) -> ObjectRef | None:
    """The object a request names, or None for bucket and service calls."""
    found = target(request, domains)
    return found if found is not None and found.bucket and found.key else None


def bucket_of(request: http.Request, domains: Sequence[str] = ()) -> str | None:
    """The bucket a request names (`/bucket?delete`, `/bucket/key`)."""
    found = target(request, domains)
    return found.bucket if found is not None and found.bucket else None


def is_signed(request: http.Request) -> bool:
    """Whether the client signed its request (an Authorization header, or a presigned URL's
    signature). Once the store has answered it other than 403, the signature held."""
    if "authorization" in request.headers:
        return True
    return "?" in request.path and any(name.lower() in ("x-amz-signature", "signature") for name in request.query.keys())


def is_plain_object_call(request: http.Request) -> bool:
    """True unless a sub-resource parameter makes the request another API call."""
    return "?" not in request.path or not any(name in SUBRESOURCES for name in request.query.keys())


class WriteKind(Enum):
    DELETE = "delete"  # DeleteObject
    DELETE_VERSION = "delete-version"  # DeleteObject ?versionId=: may or may not leave the key without an object
    DELETE_MANY = "delete-many"  # DeleteObjects
    CREATE = "create"  # PutObject, CopyObject, CompleteMultipartUpload


def write_kind(request: http.Request) -> WriteKind | None:
    """What a write does to objects; None for anything else."""
    method = request.method
    if method == "GET" or method == "HEAD":  # the hit path: nothing more to look at
        return None
    if method == "DELETE":
        if is_plain_object_call(request):
            return WriteKind.DELETE
        names = {name for name in request.query.keys() if not is_store_parameter(name)}
        return WriteKind.DELETE_VERSION if names == {"versionId"} else None
    if method == "POST" and "?" in request.path:
        names = set(request.query.keys())
        if names == {"delete"}:
            return WriteKind.DELETE_MANY
        if "uploadId" in names:
            return WriteKind.CREATE
    if method == "PUT" and is_plain_object_call(request):
        return WriteKind.CREATE
    return None
