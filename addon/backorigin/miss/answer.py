"""The answer to one missed GET or HEAD, from the fill of its object: the answer builder.

One piece of code for every way a miss is answered: the loopback miss server streams the
`Reply` (any size, bounded memory), and the request and response hooks collect a small one
into a mitmproxy response (miss.delivery). The answer is the one the object will
give once stored: the same headers, ETag and Last-Modified, conditionals and ranges as S3
evaluates them (backorigin.conditional).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace

from backorigin.decision import Outcome
from backorigin.limits import STREAM_FROM
from backorigin.miss import objectmeta
from backorigin.miss.conditional import Answer, needs_etag, plan
from backorigin.miss.fill import Fill, FillBroken
from backorigin.miss.origin import Failure, OriginResult
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import Headers, Reply, mirror_failed, redirect, s3_error, slow_down
from backorigin.s3.storeclient import StoreAnswer

READ_CHUNK = 1024 * 1024
# How long a HEAD of a miss waits for the write-back to land: tools that HEAD and then list the
# prefix before they GET (rclone cat) find the object in the listing. The GET never waits.
HEAD_WAITS_FOR_STORE = 10.0
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


async def respond(
    fill: Fill, method: str, header: Callable[[str], str | None], ref: ObjectRef, store_404: StoreAnswer,
    whole_limit: int, transparent_codes: frozenset[int],
) -> Reply:
    """The client's answer: whole, or streamed as the body arrives (see `answers_whole`). A HEAD
    also waits (a while) for the object to land in the store."""
    await fill.began()
    if fill.upload is None:  # the origin gave no body to store
        return _without_body((await fill.wait_settled()).result, ref, store_404, transparent_codes)
    if answers_whole(fill, method, header, whole_limit):
        settled = await fill.wait_settled()
        if not settled.result.ok:
            return _without_body(settled.result, ref, store_404, transparent_codes)
        size = settled.result.size
        if method == "HEAD" and settled.writeback == "queued":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fill.landed.wait(), HEAD_WAITS_FOR_STORE)
    else:
        size = fill.declared or 0
    answer = plan(header, size, fill.validators)
    if answer.status in (412, 416):
        reply = (s3_error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold", ref)
                 if answer.status == 412 else
                 s3_error(416, "InvalidRange", "The requested range is not satisfiable", ref,
                          [("content-range", answer.content_range or "")]))
        reply.outcome, reply.origin_status = Outcome.MIRRORED, 200
        return reply
    headers = _object_headers(fill, answer)
    if answer.status == 304 or method == "HEAD":
        return Reply(answer.status, headers, outcome=Outcome.MIRRORED, origin_status=200)
    return Reply(answer.status, headers, stream=_body(fill, answer), outcome=Outcome.MIRRORED, origin_status=200)


def answers_whole(fill: Fill, method: str, header: Callable[[str], str | None], whole_limit: int) -> bool:
    """Whether the answer waits for the whole body (its ETag is then known, and a broken origin is
    a clean 424) rather than streaming as the body arrives (the client's connection is reset if it
    breaks off). A GET whose ETag is known in advance (Fill.announced: an S3 origin's, an MD5 ETag,
    a Content-MD5) streams from its first byte once over STREAM_FROM; one whose ETag is not streams
    only over `whole_limit` (backorigin_max_inline), without an ETag, and never for an ETag
    condition. A HEAD and a body of unknown length always wait (an answer is trivially whole once
    the fill has settled)."""
    if fill.settled is not None or fill.upload is None or method == "HEAD" or fill.declared is None:
        return True
    if fill.declared > whole_limit:
        return needs_etag(header) and fill.announced is None
    return fill.announced is None or fill.declared <= STREAM_FROM


def _object_headers(fill: Fill, answer: Answer) -> Headers:
    assert fill.upload is not None
    validators = fill.validators
    headers = objectmeta.stored_headers(fill.upload)
    if validators.etag:
        headers.append(("etag", validators.etag))
    headers.append(("accept-ranges", "bytes"))
    if answer.status in (200, 206):
        headers.append(("content-length", str(answer.length)))
    if answer.content_range:
        headers.append(("content-range", answer.content_range))
    return headers


async def _body(fill: Fill, answer: Answer) -> AsyncGenerator[bytes, None]:
    fd = fill.open_reader()
    try:
        offset = answer.first
        while offset <= answer.last:
            chunk = await fill.read(fd, offset, answer.last, READ_CHUNK)
            if not chunk:
                raise FillBroken("the body ended early")
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _without_body(result: OriginResult, ref: ObjectRef, store_404: StoreAnswer, transparent_codes: frozenset[int]) -> Reply:
    """What a miss answers when the origin had no object to give: its 404 is the store's
    404; a transparent code passes through; an unfollowed redirect goes to the client; an origin
    too busy to ask (miss.guard) is 503 SlowDown, which S3 clients retry; anything else is 424
    MirrorFailed."""
    if result.status == 404:
        headers = [(k, v) for k, v in store_404.headers if k.lower() not in HOP_BY_HOP]
        return Reply(store_404.status, headers, store_404.body, outcome=Outcome.ORIGIN_404, detail=result.detail,
                     origin_status=404)
    if result.status in transparent_codes:
        return Reply(result.status, list(result.storable_headers.items()), result.body, outcome=Outcome.TRANSPARENT,
                     origin_status=result.status)
    if result.failure is Failure.BUSY:
        reply = slow_down(ref)
        reply.outcome = Outcome.SLOWED_DOWN
        return reply
    if result.location:
        reply = redirect(result.status or 302, result.location)
    else:
        reason = result.failure.reason if result.failure else f"the origin answered {result.status}"
        reply = mirror_failed(ref, reason, result.why)
        reply.failure = result.failure.label if result.failure else f"origin {result.status}"
    reply.origin_status = result.status
    if result.location:
        reply.outcome = Outcome.ORIGIN_REDIRECT
    return reply


async def collect(reply: Reply, limit: int) -> Reply | None:
    """The reply with its streamed body read into memory; None (and the stream closed) when
    the body is over `limit` bytes."""
    assert reply.stream is not None
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(reply.stream) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return replace(reply, body=b"".join(chunks), stream=None)
