"""What a mirrored object carries besides its bytes, on the way into the store and out.

Into the store: the origin URL and Access-Control-Allow-Origin (always), the origin's
Last-Modified (MirrorUserLastModified) and its own x-amz-meta-*/x-oss-meta-* headers
(MirrorSaveOssMeta), all as S3 user metadata. Out of the store, on later downloads, the
same metadata becomes x-oss-tag, Access-Control-Allow-Origin and Last-Modified again.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote

from mitmproxy import http

from backorigin.miss.origin import STORABLE_HEADERS, OriginResult
from backorigin.rules.model import RoutingRule, RuleAction
from backorigin.s3.addressing import ObjectRef
from backorigin.writeback.spool import ACAO_META, LAST_MODIFIED_META, ORIGIN_URL_META, ObjectUpload

_PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F)))


def describe(endpoint: str, ref: ObjectRef, rule: RoutingRule, result: OriginResult, announced_at: str) -> ObjectUpload:
    """The object a mirror stores for the origin's answer: where, the storable headers and the
    metadata; its size and digests once the whole body is in (`result`'s, when it has them)."""
    return ObjectUpload(endpoint, ref.bucket, ref.key, result.storable_headers,
                        user_metadata(result, rule.Redirect, announced_at), result.size, result.md5, result.etag,
                        result.part_size)


def oss_tag(origin_url: str) -> str:
    """x-oss-tag: "MIRROR " + the url-decoded origin URL, kept to printable ASCII."""
    return "MIRROR " + quote(unquote(origin_url), safe=_PRINTABLE_ASCII)


def user_metadata(result: OriginResult, action: RuleAction, announced_at: str) -> dict[str, str]:
    """User metadata to store with the object (values must be ASCII for S3). The
    Last-Modified a miss announces is kept too, so later answers give the same validator:
    the origin's (MirrorUserLastModified) or the time of the miss (`announced_at`)."""
    metadata = dict(result.user_metadata) if action.MirrorSaveOssMeta else {}
    metadata[ORIGIN_URL_META] = result.url
    acao = result.storable_headers.get("access-control-allow-origin")
    if acao:
        metadata[ACAO_META] = acao
    origin_last_modified = result.header("last-modified")
    metadata[LAST_MODIFIED_META] = (
        origin_last_modified if action.MirrorUserLastModified and origin_last_modified else announced_at
    )
    return {k: v for k, v in metadata.items() if v.isascii() and k.isascii()}


def stored_headers(upload: ObjectUpload) -> list[tuple[str, str]]:
    """The headers a download of `upload` will show through the proxy once it is stored
    (ETag and framing aside): what the store keeps, then what restore_on_download adds."""
    headers = [(name, upload.headers[name]) for name in STORABLE_HEADERS if name in upload.headers]
    headers += [(f"x-amz-meta-{name}", value) for name, value in upload.metadata.items()]
    found = dict(headers)
    return [(k, v) for k, v in headers if k not in ("last-modified", "x-oss-tag")] + restored_headers(found)


def restored_headers(found: Mapping[str, str]) -> list[tuple[str, str]]:
    """What an answer for an object a mirror wrote gains from its metadata: x-oss-tag, as
    OSS does, and the origin's Access-Control-Allow-Origin and the announced Last-Modified."""
    origin_url = found.get(f"x-amz-meta-{ORIGIN_URL_META}")
    if not origin_url:
        return []
    restored = [("x-oss-tag", oss_tag(origin_url))]
    acao = found.get(f"x-amz-meta-{ACAO_META}")
    if acao and "access-control-allow-origin" not in found:
        restored.append(("access-control-allow-origin", acao))
    last_modified = found.get(f"x-amz-meta-{LAST_MODIFIED_META}")
    if last_modified:
        restored.append(("last-modified", last_modified))
    return restored


def restore_on_download(response: http.Response) -> None:
    """A store answer for an object a mirror wrote says so (see restored_headers)."""
    # one pass over the raw fields: this runs on every hit, and Headers.items() looks each name up again
    fields = response.headers.fields
    found = {name.decode("latin-1").lower(): value.decode("utf-8", "surrogateescape") for name, value in fields}
    for name, value in restored_headers(found):
        response.headers[name] = value
