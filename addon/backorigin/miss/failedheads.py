"""HEADs of a miss whose mirror failed, remembered for a minute, so that rclone fails too.

Every S3 client but one fails on a failed HEAD (424 MirrorFailed, or 503 SlowDown when the
origin was too busy to ask). rclone before v1.72 (Debian 12's 1.60) opens `remote:bucket/key` by
HEADing the key, and on *any* error (404, 424, 5xx alike: backend/s3 NewFs) takes the key for a
folder: it lists `key/`, finds nothing, copies nothing and exits 0. No HEAD status can make it
fail. So the empty listing of exactly `key/` that follows (delimiter `/`, its first page), once the
store has answered it, gets that HEAD's failure instead: rclone's listing fails, and so does rclone.
A listing that shows anything (`key/` is a folder) stands, and nothing is remembered past
REMEMBERED_FOR (see docs/miss.md, "When the origin fails").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache
from mitmproxy import http

from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import Reply, mirror_failed, slow_down, to_response

logger = logging.getLogger(__name__)

REMEMBERED_FOR = 60.0  # seconds: rclone lists right after its HEAD, and again on each of its --retries
MAX_REMEMBERED = 10_000  # failed keys; the oldest are forgotten first
PAGED = ("continuation-token", "marker", "start-after")  # a later page, or one that skips the start


@dataclass(frozen=True)
class Failed:
    status: int  # what the HEAD got: 424, or 503 (busy)
    failure: str  # why, in a few words (no addresses: the Decision's `failure`)

    def reply(self, ref: ObjectRef) -> Reply:
        return slow_down(ref) if self.status == 503 else mirror_failed(ref, self.failure)


class FailedHeads:
    def __init__(self, endpoint: Callable[[http.Request], str | None]) -> None:
        """`endpoint(request)`: the store the request was read as sent to (Context.endpoint)."""
        self.endpoint = endpoint
        self.failed: TTLCache[tuple[str, str, str], Failed] = TTLCache(maxsize=MAX_REMEMBERED, ttl=REMEMBERED_FOR)

    def note(self, flow: http.HTTPFlow, ref: ObjectRef, failure: str) -> None:
        """A miss was answered: remember a HEAD that failed."""
        response = flow.response
        if flow.request.method != "HEAD" or response is None or response.status_code not in (424, 503):
            return
        endpoint = self.endpoint(flow.request)
        if endpoint is not None:
            self.failed[(endpoint, ref.bucket, ref.key)] = Failed(response.status_code, failure or "the origin failed")

    def on_listing(self, flow: http.HTTPFlow, bucket: str | None) -> None:
        """The store answered a bucket call: an empty listing of a failed HEAD's `key/` gets that
        HEAD's failure. Costs nothing while no HEAD has failed."""
        if not self.failed or bucket is None:
            return
        request, response = flow.request, flow.response
        if request.method != "GET" or response is None or response.status_code != 200 or response.stream:
            return
        query = request.query
        prefix = query.get("prefix", "")
        if query.get("delimiter") != "/" or not prefix.endswith("/") or any(name in query for name in PAGED):
            return
        endpoint = self.endpoint(request)
        failed = self.failed.get((endpoint or "", bucket, prefix[:-1]))
        if failed is None or not is_empty_listing(response.get_content(strict=False) or b""):
            return
        logger.info("listing of %s/%s answered %d: a HEAD of %s failed within %gs (%s)", bucket, prefix, failed.status,
                    prefix[:-1], REMEMBERED_FOR, failed.failure)
        flow.response = to_response(request, failed.reply(ObjectRef(bucket, prefix[:-1])))


def is_empty_listing(body: bytes) -> bool:
    """A ListObjects(V2) result that names no object and no common prefix (S3's elements carry no
    attributes; a listing with `encoding-type=url` has the same element names)."""
    return b"<ListBucketResult" in body and b"<Contents>" not in body and b"<CommonPrefixes>" not in body
