"""S3 request addressing: what kind of call a request is (the bucket and key it names are the
store's reading, s3.reading), and the keys of a DeleteObjects body.

Pure functions over mitmproxy requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mitmproxy import http

BUCKET_PLACEHOLDER = "${bucket}"  # a bucket's name in a rule's origin URL (rules.buckets)
_HOST_BUCKET = f"://{BUCKET_PLACEHOLDER}."


def host_bucket_base(endpoint: str) -> str | None:
    """For an S3 endpoint whose host is ${bucket}.HOST (virtual-hosted style: each bucket at a
    host of its own), the endpoint of HOST; None for any other endpoint."""
    scheme, found, rest = endpoint.partition(_HOST_BUCKET)
    return f"{scheme}://{rest}" if found and rest and BUCKET_PLACEHOLDER not in rest else None


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
    """An object as a request names it: its bucket and key."""

    bucket: str
    key: str


ObjectKey = tuple[str, str, str]  # (store endpoint, bucket, key): one object in one store


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
