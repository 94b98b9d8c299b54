"""The answer builder: what a missed GET or HEAD answers, from its object's fill, as the stored
object will answer (headers, validators, conditionals, ranges), and what a miss answers when the
origin had no object to give."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

import pytest

from backorigin.decision import Outcome
from backorigin.miss import answer
from backorigin.miss.answer import collect, respond
from backorigin.miss.fill import Fill, Settled
from backorigin.miss.origin import Failure, OriginResult
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import Reply, error_code_of
from backorigin.s3.storeclient import StoreAnswer
from tests.unit.test_miss_fill import new_fill

REF = ObjectRef("b", "k")
BODY = b"0123456789" * 10
ETAG = f'"{hashlib.md5(BODY).hexdigest()}"'
STORE_404 = StoreAnswer(404, (("content-type", "application/xml"), ("content-length", "3"), ("x-amz-request-id", "r")), b"404")
WHOLE = 1024


def headers(**given: str) -> Callable[[str], str | None]:
    return {k.replace("_", "-"): v for k, v in given.items()}.get


def arrived(tmp_path, body: bytes = BODY, extra: tuple[tuple[str, str], ...] = ()) -> Fill:
    """A fill whose whole body has arrived and been spooled, its write-back already landed."""
    fill = new_fill(tmp_path)
    fill.begin(200, (("content-length", str(len(body))), ("content-type", "text/plain"), *extra), "http://o/k", None)
    fill.write(body)
    fill.settle(Settled(OriginResult("http://o/k", 200, size=len(body), md5="m", etag=f'"{hashlib.md5(body).hexdigest()}"'),
                        "queued"))
    fill.landed.set()
    return fill


async def body_of(reply: Reply) -> bytes:
    assert reply.stream is not None
    return b"".join([chunk async for chunk in reply.stream])


async def test_a_get_answers_the_whole_object_with_the_headers_it_will_have_once_stored(tmp_path):
    reply = await respond(arrived(tmp_path), "GET", headers(), REF, STORE_404, WHOLE, frozenset())
    shown = dict(reply.headers)
    assert reply.status == 200 and reply.outcome is Outcome.MIRRORED and reply.origin_status == 200
    assert shown["etag"] == ETAG and shown["content-length"] == str(len(BODY)) and shown["accept-ranges"] == "bytes"
    assert shown["content-type"] == "text/plain" and shown["x-oss-tag"] == "MIRROR http://o/k" and "last-modified" in shown
    assert await body_of(reply) == BODY


async def test_a_range_gets_206_with_exactly_its_bytes(tmp_path):
    reply = await respond(arrived(tmp_path), "GET", headers(range="bytes=10-19"), REF, STORE_404, WHOLE, frozenset())
    assert reply.status == 206 and dict(reply.headers)["content-range"] == f"bytes 10-19/{len(BODY)}"
    assert await body_of(reply) == BODY[10:20]


@pytest.mark.parametrize("given, status, code", [
    ({"if_none_match": ETAG}, 304, None),
    ({"if_match": '"other"'}, 412, "PreconditionFailed"),
    ({"range": "bytes=500-"}, 416, "InvalidRange"),
])
async def test_conditionals_are_judged_against_the_object(tmp_path, given, status, code):
    reply = await respond(arrived(tmp_path), "GET", headers(**given), REF, STORE_404, WHOLE, frozenset())
    assert reply.status == status and reply.stream is None
    assert error_code_of(reply.body) == code


async def test_a_head_has_the_length_and_no_body(tmp_path):
    reply = await respond(arrived(tmp_path), "HEAD", headers(), REF, STORE_404, WHOLE, frozenset())
    assert reply.status == 200 and reply.stream is None and reply.body == b""
    assert dict(reply.headers)["content-length"] == str(len(BODY))


async def test_a_body_over_the_whole_limit_streams_before_it_has_arrived_without_an_etag(tmp_path):
    fill = new_fill(tmp_path)
    fill.begin(200, (("content-length", str(len(BODY))),), "http://o/k", None)
    fill.write(BODY[:30])
    reply = await asyncio.wait_for(respond(fill, "GET", headers(), REF, STORE_404, 10, frozenset()), 1)
    assert reply.status == 200 and "etag" not in dict(reply.headers)
    reading = asyncio.ensure_future(body_of(reply))
    fill.write(BODY[30:])
    fill.settle(Settled(OriginResult("http://o/k", 200, size=len(BODY), md5="m", etag=ETAG), "queued"))
    assert await reading == BODY


async def test_a_body_streamed_before_it_has_arrived_carries_the_etag_known_in_advance(tmp_path):
    fill = new_fill(tmp_path)
    fill.begin(200, (("content-length", str(len(BODY))),), "http://o/k", ETAG)
    fill.write(BODY[:30])
    reply = await asyncio.wait_for(respond(fill, "GET", headers(), REF, STORE_404, 10, frozenset()), 1)
    assert reply.status == 200 and dict(reply.headers)["etag"] == ETAG
    early = await asyncio.wait_for(respond(fill, "GET", headers(if_none_match=ETAG), REF, STORE_404, 10, frozenset()), 1)
    assert early.status == 304  # a client's cached copy is judged by it too
    reading = asyncio.ensure_future(body_of(reply))
    fill.write(BODY[30:])
    fill.settle(Settled(OriginResult("http://o/k", 200, size=len(BODY), md5="m", etag=ETAG), "queued"))
    assert await reading == BODY


@pytest.mark.parametrize("etag, waits", [(ETAG, False), (None, True)], ids=["etag-known", "etag-unknown"])
async def test_under_the_whole_limit_only_a_body_whose_etag_is_known_streams(tmp_path, monkeypatch, etag, waits):
    """A body over STREAM_FROM but within the whole limit: with its ETag known in advance the
    answer starts before the body has arrived; without, it waits for the whole body (and its ETag)."""
    monkeypatch.setattr(answer, "STREAM_FROM", 10)
    fill = new_fill(tmp_path)
    fill.begin(200, (("content-length", str(len(BODY))),), "http://o/k", etag)
    fill.write(BODY[:30])
    replying = asyncio.ensure_future(respond(fill, "GET", headers(), REF, STORE_404, WHOLE, frozenset()))
    done, _ = await asyncio.wait([replying], timeout=0.5)
    assert (replying not in done) is waits
    assert answer.answers_whole(fill, "GET", headers(), WHOLE) is waits
    assert answer.answers_whole(fill, "HEAD", headers(), WHOLE)  # a HEAD always waits
    fill.write(BODY[30:])
    fill.settle(Settled(OriginResult("http://o/k", 200, size=len(BODY), md5="m", etag=ETAG), "queued"))
    reply = await replying
    assert dict(reply.headers)["etag"] == ETAG and await body_of(reply) == BODY


@pytest.mark.parametrize("result, status, outcome", [
    (OriginResult("http://o/k", 404), 404, Outcome.ORIGIN_404),
    (OriginResult("http://o/k", 403, (("content-type", "text/plain"),), b"no"), 403, Outcome.TRANSPARENT),
    (OriginResult("http://o/k", 302, location="http://elsewhere/k"), 302, Outcome.ORIGIN_REDIRECT),
    (OriginResult.failed("http://o/k", Failure.TIMEOUT, "no complete answer within 1s"), 424, Outcome.MIRROR_FAILED),
    (OriginResult("http://o/k", 500), 424, Outcome.MIRROR_FAILED),
])
async def test_an_origin_without_an_object_to_give(tmp_path, result, status, outcome):
    fill = new_fill(tmp_path)
    fill.settle(Settled(result, "none (no object)"))
    reply = await respond(fill, "GET", headers(), REF, STORE_404, WHOLE, frozenset({403}))
    assert (reply.status, reply.outcome) == (status, outcome)
    if status == 404:  # the store's own 404, framing left to whoever sends it
        assert reply.body == b"404" and ("content-length", "3") not in reply.headers and ("x-amz-request-id", "r") in reply.headers
    if status == 403:
        assert reply.body == b"no"
    if status == 302:
        assert ("location", "http://elsewhere/k") in reply.headers


async def test_collect_reads_a_streamed_answer_into_memory_up_to_a_limit(tmp_path):
    small = await respond(arrived(tmp_path), "GET", headers(), REF, STORE_404, WHOLE, frozenset())
    collected = await collect(small, len(BODY))
    assert collected is not None and collected.body == BODY and collected.stream is None
    large = await respond(arrived(tmp_path), "GET", headers(), REF, STORE_404, WHOLE, frozenset())
    assert await collect(large, len(BODY) - 1) is None


async def test_a_head_waits_a_while_for_the_write_back_to_land(tmp_path, monkeypatch):
    monkeypatch.setattr(answer, "HEAD_WAITS_FOR_STORE", 0.05)
    fill = arrived(tmp_path)
    fill.landed.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await respond(fill, "HEAD", headers(), REF, STORE_404, WHOLE, frozenset())
    assert reply.status == 200 and loop.time() - started >= 0.05
