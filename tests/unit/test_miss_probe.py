"""The store probe: the client's own request, sent to the store before mitmproxy sends it, with
every header the client signed and no body framing; its answer, read whole up to the limit, is the
client's answer byte for byte."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy.test import tutils

from backorigin.limits import PROBE_ANSWER_LIMIT
from backorigin.miss.probe import ExistenceCache, StoreProbe
from backorigin.tools.embedded_store import free_ports

ERROR = b"<Error><Code>NoSuchKey</Code></Error>"


class FakeStore:
    """An HTTP server in this process that answers every request with `status` and keeps each request head."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status, self.body = status, body
        self.extra = b""  # more header lines
        self.heads: list[bytes] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-amz-request-id: r\r\n%s\r\n%s" % (
            self.status, len(self.body), self.extra, self.body))
        await writer.drain()
        writer.close()


@pytest.fixture
async def probe():
    probe = StoreProbe()
    yield probe
    await probe.aclose()


def client_request(port: int, method: str = "GET", headers: tuple = ()):
    return tutils.treq(host="127.0.0.1", port=port, method=method.encode(), path=b"/b/k%20x?versionId=1", content=b"",
                       headers=((b"host", b"127.0.0.1"), (b"authorization", b"AWS4-HMAC-SHA256 sig"),
                                (b"content-length", b"0"), (b"connection", b"close"), *headers))


async def test_the_clients_request_goes_to_the_store_as_it_was_signed(probe):
    store = FakeStore(404, ERROR)
    port = await store.start()
    answer = await probe.ask(client_request(port), "127.0.0.1")
    assert answer is not None and answer.status == 404 and answer.body == ERROR and answer.header("x-amz-request-id") == "r"
    head = store.heads[0].decode().lower()
    assert head.startswith("get /b/k%20x?versionid=1 http/1.1") and "authorization: aws4-hmac-sha256 sig" in head
    assert "range" not in head  # the request as the client sent it: its answer is the client's
    assert "content-length" not in head and "connection: close" not in head  # no body goes with it


async def test_a_head_or_a_ranged_get_is_sent_as_it_is(probe):
    store = FakeStore(200)
    port = await store.start()
    await probe.ask(client_request(port, "HEAD"), "127.0.0.1")
    await probe.ask(client_request(port, "GET", ((b"range", b"bytes=5-9"),)), "127.0.0.1")
    assert "range" not in store.heads[0].decode().lower()
    assert store.heads[1].decode().lower().count("range:") == 1 and "range: bytes=5-9" in store.heads[1].decode().lower()


async def test_nothing_one_client_got_goes_with_anothers_request(probe):
    store = FakeStore(404, ERROR)
    store.extra = b"set-cookie: balancer=sticky\r\n"
    port = await store.start()
    await probe.ask(client_request(port), "127.0.0.1")
    await probe.ask(client_request(port), "127.0.0.1")
    assert all(b"cookie" not in head.lower() for head in store.heads)


async def test_a_path_that_is_not_ascii_is_not_sent_by_the_probe(probe):
    store = FakeStore(200)
    port = await store.start()
    request = client_request(port)
    request.path = "/b/k\udcff"  # a raw 0xff byte from the client
    assert await probe.ask(request, "127.0.0.1") is None and store.heads == []


async def test_a_store_that_cannot_be_reached_is_no_answer(probe):
    assert await probe.ask(client_request(free_ports(1)[0]), "127.0.0.1") is None


@pytest.mark.parametrize("method, status, body, complete", [
    ("GET", 200, b"small body", True), ("GET", 206, b"x" * PROBE_ANSWER_LIMIT, True), ("HEAD", 200, b"", True),
    ("GET", 304, b"", True), ("GET", 403, b"<Error><Code>AccessDenied</Code></Error>", True),
    ("GET", 200, b"x" * (PROBE_ANSWER_LIMIT + 1), False),
])
async def test_the_stores_answer_is_kept_whole_up_to_the_limit_exactly_as_sent(probe, method, status, body, complete):
    store = FakeStore(status, body)
    store.extra = b"X-Amz-Meta-Name: caf\xc3\xa9\r\nETag: \"e\"\r\n"
    answer = await probe.ask(client_request(await store.start(), method), "127.0.0.1")
    assert answer is not None and answer.complete is complete
    if not complete:
        assert answer.body == b""  # left unread
        return
    response = answer.response()
    assert (response.status_code, response.reason, response.raw_content) == (status, "X", body)
    assert response.headers.fields == ((b"content-length", str(len(body)).encode()), (b"x-amz-request-id", b"r"),
                                       (b"X-Amz-Meta-Name", b"caf\xc3\xa9"), (b"ETag", b'"e"'))


async def test_a_body_of_unknown_length_over_the_limit_is_not_kept(probe):
    store = FakeStore(200)
    port = await store.start()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(PROBE_ANSWER_LIMIT // 65536 + 2):
            writer.write(b"10000\r\n" + b"x" * 65536 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    store.server.close()
    server = await asyncio.start_server(chunked, "127.0.0.1", port)
    try:
        answer = await probe.ask(client_request(port), "127.0.0.1")
    finally:
        server.close()
    assert answer is not None and answer.status == 200 and not answer.complete


def test_objects_known_to_exist_are_forgotten_after_a_while_and_past_the_size():
    clock = [0.0]
    known = ExistenceCache(ttl=60, size=2, now=lambda: clock[0])
    for key in ("a", "b", "c"):
        known.add(("e", "b", key))
    assert ("e", "b", "a") not in known and ("e", "b", "c") in known
    known.discard(("e", "b", "c"))
    assert ("e", "b", "c") not in known
    clock[0] = 61.0
    assert ("e", "b", "b") not in known
