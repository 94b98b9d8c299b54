"""A missing object is fetched from the origin once per proxy, however
the misses are timed; a miss answers conditionals and ranges as the stored object will; and
the validators a miss announces (ETag, Last-Modified) are the ones the store then gives.

Real mitmdump with the addon, real SeaweedFS, the scripted origin. Origin requests are
counted from the origin's own log: every case expects one GET and no HEAD.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests.clients import range_for, sized_sha256, stored_sha256
from tests.origin_server import body_for, sized_body
from tests.support import (
    Mitmdump,
    Relay,
    http_get,
    mirror_rule,
    stored,
    wait_for,
    wait_stored,
    write_rules,
)

BUCKET = "timing-bucket"
THROTTLED_BUCKET = "timing-throttled-bucket"  # its MirrorURL goes through a bandwidth-limited relay
MiB = 1 << 20
BIG = 30 * MiB  # over the write-back's 16 MiB part size: a multipart upload, ETag "<md5>-2"
STORE_PART = 16 * MiB
CLIENT_PART = 8 * MiB  # s3transfer's default multipart_chunksize
ORIGIN_RATE = 10 * MiB  # bytes/s through the throttled relay: a 30 MiB fetch takes about 3 s
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"
PAST = "Sat, 01 Jan 2000 00:00:00 GMT"
WRONG_ETAG = '"0123456789abcdef0123456789abcdef"'


# helpers -------------------------------------------------------------------------------------


def request(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, exactly these headers (plus Host): status, headers, body."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, parts.path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def quoted_md5(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'


def multipart_etag(size: int) -> str:
    """The ETag of the `sized` body of `size` bytes uploaded in 16 MiB parts, computed here
    from the bytes (not with the addon's code): md5 of the parts' binary md5s, "-<parts>"."""
    digests, part, filled = [], hashlib.md5(), 0
    for piece in sized_body(size):
        while piece:
            take = piece[: STORE_PART - filled]
            part.update(take)
            filled += len(take)
            piece = piece[len(take):]
            if filled == STORE_PART:
                digests.append(part.digest())
                part, filled = hashlib.md5(), 0
    if filled:
        digests.append(part.digest())
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetched_once(origin, unique: str) -> dict[str, int]:
    return {"GET": origin.count("GET", unique), "HEAD": origin.count("HEAD", unique)}


def stored_once(proxy: Mitmdump, key: str) -> int:
    return proxy.log().count(f"write-back stored s3://{BUCKET}/{key} ")


# fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def throttled_origin(origin):
    relay = Relay(origin.port, rate=ORIGIN_RATE)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def timing_rules(tmp_path_factory, store, origin, throttled_origin):
    store.create_buckets([BUCKET, THROTTLED_BUCKET])
    return write_rules(tmp_path_factory.mktemp("timing") / "rules.json", {
        BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")],
        THROTTLED_BUCKET: [mirror_rule(1, f"http://127.0.0.1:{throttled_origin.port}/dir1/")],
    })


def timing_proxy_for(workdir, store, rules, **options) -> Mitmdump:
    return Mitmdump(f"reverse:{store.endpoint}", rules, workdir, {"backorigin_origin_timeout": "30", **options})


@pytest.fixture(scope="module")
def timing_proxy(tmp_path_factory, store, timing_rules):
    """Default options (backorigin_max_inline 64m: a 30 MiB miss is answered once complete)."""
    proxy = timing_proxy_for(tmp_path_factory.mktemp("timing-proxy"), store, timing_rules).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def streaming_proxy(tmp_path_factory, store, timing_rules):
    """backorigin_max_inline=8m: a 30 MiB GET is streamed as it arrives."""
    proxy = timing_proxy_for(tmp_path_factory.mktemp("streaming-proxy"), store, timing_rules,
                             backorigin_max_inline="8m").start()
    yield proxy
    proxy.stop()


@contextlib.contextmanager
def pending_writebacks(tmp_path, store, rules, delay: float, **options) -> Iterator[Mitmdump]:
    """A proxy whose write-backs go through a relay that holds each connection `delay` s."""
    relay = Relay(store.s3_port, delay=delay)
    proxy = timing_proxy_for(tmp_path, store, rules, backorigin_s3_endpoint=f"http://127.0.0.1:{relay.port}",
                             **options).start()
    try:
        yield proxy
    finally:
        proxy.stop()
        relay.close()


# 3. One origin GET per object per proxy, whatever the timing ---------------------------------


def test_simultaneous_gets_of_one_missing_key_share_one_origin_get(timing_proxy, origin, s3, unique):
    key = f"gate/{unique}"
    body = body_for(f"/dir1/{key}")
    origin.gate.clear()
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            pending = [pool.submit(http_get, f"{timing_proxy.url}/{BUCKET}/{key}") for _ in range(10)]
            wait_for(lambda: origin.count("GET", unique))  # the proxy is waiting on the origin now
            # the origin stays held until the nine others have joined (the gate gives up after 10 s)
            wait_for(lambda: timing_proxy.log().count(f"joins the origin fetch under way for {key} ") == 9, within=8)
            origin.gate.set()
            answers = [p.result(timeout=30) for p in pending]
    finally:
        origin.gate.set()
    assert [(status, sha256(got)) for status, _, got in answers] == [(200, sha256(body))] * 10
    assert {headers.get("etag") for _, headers, _ in answers} == {quoted_md5(body)}
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
    assert wait_stored(s3, BUCKET, key)["ETag"] == quoted_md5(body)
    wait_for(lambda: stored_once(timing_proxy, key))
    assert stored_once(timing_proxy, key) == 1


def test_gets_100ms_apart_while_a_large_body_is_still_arriving(streaming_proxy, throttled_origin, origin, s3, unique):
    """Five GETs of a 30 MiB miss, 100 ms apart, while the origin's body is still arriving
    (about 3 s through the throttled relay) and the first client is still streaming it."""
    key = f"sized/{BIG}/{unique}.bin"
    url = f"{streaming_proxy.url}/{THROTTLED_BUCKET}/{key}"
    fetched = f"RuleNumber 1: GET http://127.0.0.1:{throttled_origin.port}/dir1/{key} -> "  # logged once the body is in
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        pending = []
        for _ in range(5):
            pending.append(pool.submit(http_get, url))
            time.sleep(0.1)  # the scenario's spacing
        # the precondition of the scenario: the origin's body was still arriving meanwhile
        still_fetching = fetched not in streaming_proxy.log()
        answers = [p.result(timeout=120) for p in pending]
    assert fetched in streaming_proxy.log()  # the line the precondition looked for does get logged
    assert still_fetching, "the origin fetch ended before the fifth GET was sent; the relay is too fast"
    assert [(status, sha256(got)) for status, _, got in answers] == [(200, sized_sha256(BIG))] * 5
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
    assert streaming_proxy.log().count(f"joins the origin fetch under way for {key} ") == 4
    head = wait_stored(s3, THROTTLED_BUCKET, key, within=60)
    assert head["ContentLength"] == BIG and head["ETag"] == multipart_etag(BIG)
    assert stored_sha256(s3, THROTTLED_BUCKET, key) == sized_sha256(BIG)


def test_misses_while_the_write_back_is_pending_are_answered_from_the_spool(tmp_path, store, s3, origin, timing_rules,
                                                                            unique):
    size = 2 * MiB + 3
    key = f"sized/{size}/{unique}.bin"
    with pending_writebacks(tmp_path, store, timing_rules, delay=3.0) as proxy:
        url = f"{proxy.url}/{BUCKET}/{key}"
        answers = []
        for _ in range(3):
            answers.append(http_get(url))
            assert stored(s3, BUCKET, key) is None, "landed too early: the later GETs did not meet a pending write-back"
        assert [(status, sha256(got)) for status, _, got in answers] == [(200, sized_sha256(size))] * 3
        assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
        assert proxy.log().count(f"joins the origin fetch under way for {key} ") == 2
        head = wait_stored(s3, BUCKET, key, within=30)
        assert head["ContentLength"] == size
        assert stored_sha256(s3, BUCKET, key) == sized_sha256(size)
        assert {headers["etag"] for _, headers, _ in answers} == {head["ETag"]}
        wait_for(lambda: stored_once(proxy, key))
    assert stored_once(proxy, key) == 1
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}


def ranged_parts_with_if_match(proxy_url: str, bucket: str, key: str, size: int, etag: str) -> list[tuple[int, str | None, str]]:
    """What s3transfer sends after its HEAD: 8 MiB ranged GETs in parallel, each with If-Match."""
    ranges = [(first, min(first + CLIENT_PART, size) - 1) for first in range(0, size, CLIENT_PART)]

    def part(bounds: tuple[int, int]) -> tuple[int, str | None, str]:
        status, headers, got = request("GET", f"{proxy_url}/{bucket}/{key}",
                                       {"Range": f"bytes={bounds[0]}-{bounds[1]}", "If-Match": etag})
        return status, headers.get("content-range"), sha256(got)

    with concurrent.futures.ThreadPoolExecutor(len(ranges)) as pool:
        answers = list(pool.map(part, ranges))
    expected = [(206, f"bytes {first}-{last}/{size}", sized_sha256(size, first, last)) for first, last in ranges]
    assert answers == expected
    return answers


def the_store_gives_what_the_head_announced(proxy: Mitmdump, s3, key: str, head: dict[str, str]) -> None:
    """Once landed: the store's ETag and bytes, and its answer through the proxy, match the HEAD."""
    assert wait_stored(s3, BUCKET, key, within=60)["ETag"] == head["etag"]
    status, later, _ = request("GET", f"{proxy.url}/{BUCKET}/{key}", {"Range": "bytes=0-0"})
    assert status == 206 and "x-amz-request-id" in later  # the store's answer
    assert (later["etag"], later["last-modified"]) == (head["etag"], head["last-modified"])
    assert stored_sha256(s3, BUCKET, key) == sized_sha256(BIG)


def test_head_then_parallel_ranged_gets_with_if_match_as_s3transfer_does(timing_proxy, origin, s3, unique):
    """The write-back lands while the HEAD waits for it: the parts are answered by the store."""
    key = f"sized/{BIG}/{unique}.bin"
    status, head, _ = request("HEAD", f"{timing_proxy.url}/{BUCKET}/{key}")
    assert status == 200 and int(head["content-length"]) == BIG
    assert head["etag"] == multipart_etag(BIG)
    assert stored(s3, BUCKET, key), "the HEAD should have waited for the write-back to land"
    ranged_parts_with_if_match(timing_proxy.url, BUCKET, key, BIG, head["etag"])
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
    the_store_gives_what_the_head_announced(timing_proxy, s3, key, head)
    assert stored_once(timing_proxy, key) == 1


def test_head_then_parallel_ranged_gets_with_if_match_while_the_write_back_is_pending(tmp_path, store, s3, origin,
                                                                                    timing_rules, unique):
    """The write-back is held longer than a HEAD waits for it (10 s): the parts are answered
    from the spool, and must give exactly what the store gives once the object lands."""
    key = f"sized/{BIG}/{unique}.bin"
    with pending_writebacks(tmp_path, store, timing_rules, delay=15.0) as proxy:
        status, head, _ = request("HEAD", f"{proxy.url}/{BUCKET}/{key}")
        assert status == 200 and int(head["content-length"]) == BIG
        assert head["etag"] == multipart_etag(BIG)
        ranged_parts_with_if_match(proxy.url, BUCKET, key, BIG, head["etag"])
        assert stored(s3, BUCKET, key) is None, "landed too early: the parts did not meet a pending write-back"
        assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
        the_store_gives_what_the_head_announced(proxy, s3, key, head)
        wait_for(lambda: stored_once(proxy, key))
    assert stored_once(proxy, key) == 1
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}


# 4. Validators and conditionals on a missing object ------------------------------------------


def _304_with_its_etag(status: int, headers: dict[str, str], got: bytes, body: bytes) -> None:
    assert (status, got) == (304, b"")
    assert headers.get("etag") == quoted_md5(body)  # RFC 9110: a 304 carries the ETag a 200 would


def _304(status: int, headers: dict[str, str], got: bytes, body: bytes) -> None:
    assert (status, got) == (304, b"")


def _412(status: int, headers: dict[str, str], got: bytes, body: bytes) -> None:
    assert status == 412 and b"<Code>PreconditionFailed</Code>" in got


def _whole_body(status: int, headers: dict[str, str], got: bytes, body: bytes) -> None:
    assert (status, got) == (200, body) and "content-range" not in headers


def _416(status: int, headers: dict[str, str], got: bytes, body: bytes) -> None:
    assert status == 416 and headers.get("content-range") == f"bytes */{len(body)}"
    assert b"<Code>InvalidRange</Code>" in got


CONDITIONALS: dict[str, tuple[Callable[[bytes], dict[str, str]], Callable[..., None]]] = {
    "if-none-match-the-coming-etag": (lambda body: {"If-None-Match": quoted_md5(body)}, _304_with_its_etag),
    "if-match-a-wrong-etag": (lambda body: {"If-Match": WRONG_ETAG}, _412),
    "if-modified-since-the-future": (lambda body: {"If-Modified-Since": FUTURE}, _304),
    "if-unmodified-since-the-past": (lambda body: {"If-Unmodified-Since": PAST}, _412),
    "if-range-a-wrong-etag": (lambda body: {"If-Range": WRONG_ETAG, "Range": "bytes=0-9"}, _whole_body),
    "range-beyond-the-end": (lambda body: {"Range": f"bytes={len(body) + 100}-"}, _416),
}


@pytest.mark.parametrize("case", CONDITIONALS, ids=list(CONDITIONALS))
def test_conditionals_on_a_missing_object_answer_as_the_stored_object_will(case, timing_proxy, origin, s3, unique):
    key = f"ok/{unique}"
    body = body_for(f"/dir1/{key}")
    headers_for, check = CONDITIONALS[case]
    status, headers, got = request("GET", f"{timing_proxy.url}/{BUCKET}/{key}", headers_for(body))
    check(status, headers, got, body)
    assert wait_stored(s3, BUCKET, key)["ETag"] == quoted_md5(body)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
    wait_for(lambda: stored_once(timing_proxy, key))
    assert stored_once(timing_proxy, key) == 1


def test_a_large_ranged_miss_gets_exactly_its_bytes(streaming_proxy, origin, s3, unique):
    key = f"sized/{BIG}/{unique}.bin"
    first, last = range_for(BIG)
    status, headers, got = request("GET", f"{streaming_proxy.url}/{BUCKET}/{key}", {"Range": f"bytes={first}-{last}"})
    assert (status, headers.get("content-range"), len(got)) == (206, f"bytes {first}-{last}/{BIG}", last - first + 1)
    assert sha256(got) == sized_sha256(BIG, first, last)
    head = wait_stored(s3, BUCKET, key, within=60)
    assert head["ContentLength"] == BIG and head["ETag"] == multipart_etag(BIG)
    assert stored_sha256(s3, BUCKET, key) == sized_sha256(BIG)
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
    wait_for(lambda: stored_once(streaming_proxy, key))
    assert stored_once(streaming_proxy, key) == 1


# 5. The validators hold ----------------------------------------------------------------------


def later_answer_from_the_store(proxy: Mitmdump, key: str, method: str = "GET") -> dict[str, str]:
    status, headers, _ = request(method, f"{proxy.url}/{BUCKET}/{key}")
    assert status == 200 and "x-amz-request-id" in headers  # the store's answer, not a miss's
    return headers


def test_a_small_miss_announces_the_validators_the_store_then_gives(timing_proxy, origin, s3, unique):
    key = f"ok/{unique}.txt"
    body = body_for(f"/dir1/{key}")
    status, first, got = request("GET", f"{timing_proxy.url}/{BUCKET}/{key}")
    assert (status, got) == (200, body)
    assert first["etag"] == quoted_md5(body) and first.get("last-modified")
    stored_head = wait_stored(s3, BUCKET, key)
    later = later_answer_from_the_store(timing_proxy, key)
    assert (later["etag"], later["last-modified"]) == (first["etag"], first["last-modified"])
    assert stored_head["ETag"] == first["etag"]
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}


def test_a_multipart_sized_miss_announces_the_validators_the_store_then_gives(timing_proxy, origin, s3, unique):
    key = f"sized/{BIG}/{unique}.bin"
    status, first, _ = request("HEAD", f"{timing_proxy.url}/{BUCKET}/{key}")
    assert status == 200 and int(first["content-length"]) == BIG
    assert first["etag"] == multipart_etag(BIG) and first.get("last-modified")
    stored_head = wait_stored(s3, BUCKET, key, within=60)
    for method in ("HEAD", "GET"):
        later = later_answer_from_the_store(timing_proxy, key, method)
        assert (later["etag"], later["last-modified"]) == (first["etag"], first["last-modified"]), method
    assert stored_head["ETag"] == first["etag"]
    assert stored_sha256(s3, BUCKET, key) == sized_sha256(BIG)
    assert fetched_once(origin, unique) == {"GET": 1, "HEAD": 0}
