"""What a mirrored object carries besides its bytes, on the way into the store and out.

Into the store: the origin URL and Access-Control-Allow-Origin (always), the origin's
Last-Modified (MirrorUserLastModified) and its own x-amz-meta-*/x-oss-meta-* headers
(MirrorSaveOssMeta), all as S3 user metadata. Out of the store, on later downloads, the
same metadata becomes x-oss-tag, Access-Control-Allow-Origin and Last-Modified again.
"""

from __future__ import annotations

from mitmproxy import http

from addon.origin import OriginResult
from addon.replies import oss_tag
from addon.rules import RuleAction

ORIGIN_URL_META = "backorigin-origin-url"
ACAO_META = "access-control-allow-origin"
LAST_MODIFIED_META = "backorigin-last-modified"


def user_metadata(result: OriginResult, action: RuleAction) -> dict[str, str]:
    """User metadata to store with the object (values must be ASCII for S3)."""
    metadata = dict(result.user_metadata) if action.MirrorSaveOssMeta else {}
    metadata[ORIGIN_URL_META] = result.url
    acao = result.storable_headers.get("access-control-allow-origin")
    if acao:
        metadata[ACAO_META] = acao
    last_modified = result.header("last-modified")
    if action.MirrorUserLastModified and last_modified:
        metadata[LAST_MODIFIED_META] = last_modified
    return {k: v for k, v in metadata.items() if v.isascii() and k.isascii()}


def mirrored_extra_headers(result: OriginResult, action: RuleAction) -> list[tuple[str, str]]:
    """Headers the first (mirrored) answer shows so that it looks like later store answers."""
    extra = [(f"x-amz-meta-{k}", v) for k, v in result.user_metadata.items()] if action.MirrorSaveOssMeta else []
    last_modified = result.header("last-modified")
    if action.MirrorUserLastModified and last_modified:
        extra.append(("last-modified", last_modified))
    return extra


def restore_on_download(response: http.Response) -> None:
    """A store answer for an object a mirror wrote says so, as OSS does (x-oss-tag)."""
    headers = response.headers
    # one pass over the raw fields: this runs on every hit, and Headers.items() looks each name up again
    found = {name.decode("latin-1").lower(): value.decode("utf-8", "surrogateescape") for name, value in headers.fields}
    origin_url = found.get(f"x-amz-meta-{ORIGIN_URL_META}")
    if not origin_url:
        return
    headers["x-oss-tag"] = oss_tag(origin_url)
    acao = found.get(f"x-amz-meta-{ACAO_META}")
    if acao and "access-control-allow-origin" not in found:
        headers["access-control-allow-origin"] = acao
    last_modified = found.get(f"x-amz-meta-{LAST_MODIFIED_META}")
    if last_modified:
        headers["last-modified"] = last_modified
