"""StoreClient on the wire: the client's request goes to the store byte for byte (its path with
dot segments, its headers in order, case and number, nothing added); an answer read to its end
leaves its connection for the next request, one left unread does not; TLS verification as
mitmproxy's; mitmproxy's upstream proxy. Against a scripted store on loopback sockets."""

from __future__ import annotations

import pytest
from mitmproxy.test import tutils

from backorigin.limits import STORE_ERROR_BODY_LIMIT
from backorigin.s3.storeclient import StoreClient
from tests.loopback import Loopback, server_context
from tests.modes_support import make_test_ca

SIGNED = ((b"X-Amz-Date", b"20250101T000000Z"), (b"Host", b"store.test:9000"), (b"x-amz-meta-a", b"1"),
          (b"x-amz-meta-a", b"2"), (b"Authorization", b"AWS4-HMAC-SHA256 Credential=AK/..."), (b"X-Amz-Meta-A", b"3"))


def request(port: int, path: str, headers: tuple = SIGNED[:-1], method: str = "GET", scheme: str = "http"):
    asked = tutils.treq(host="127.0.0.1", port=port, method=method.encode(), scheme=scheme.encode(), content=b"",
                        headers=(*headers, (b"Content-Length", b"0"), (b"Connection", b"keep-alive")))
    asked.path = path  # as mitmproxy decodes the client's bytes (UTF-8, surrogateescape)
    return asked


async def ask(client: StoreClient, asked, **options):
    """The store check as the addon makes it: with the Host the store sees (the request's own here)."""
    return await client.ask(asked, asked.headers.get("host") or f"{asked.host}:{asked.port}", **options)


@pytest.fixture
async def store():
    scripted = Loopback()
    await scripted.listen()
    yield scripted
    await scripted.close()


@pytest.fixture
async def client():
    client = StoreClient()
    yield client
    await client.aclose()


async def test_the_request_goes_out_byte_for_byte_dot_segments_included(store, client):
    """httpx removed "." and ".." segments even from a raw path: the probe for a/./c/../d asked
    about a/d, and the client would have been given that other object's bytes."""
    path = "/b//a/./c/../d%2Fe%20f%7e?x=1&y=%7E&z"
    store.answers[f"http://store.test:9000{path}"] = (200, {"ETag": '"dotted"'}, b"the dotted key's")
    answer = await ask(client, request(store.port, path), keep_up_to=1024)
    assert answer is not None and answer.complete and answer.body == b"the dotted key's"
    assert store.seen[0].head == (f"GET {path} HTTP/1.1\r\n".encode() + b"".join(b"%s: %s\r\n" % field for field in SIGNED[:-1]) + b"\r\n")


async def test_a_request_without_host_gets_the_stores_address_and_nothing_else(store, client):
    answer = await ask(client, request(store.port, "/b/k", headers=((b"x-amz-date", b"d"),)))
    assert answer is not None and answer.status == 404
    assert store.seen[0].head == f"GET /b/k HTTP/1.1\r\nHost: 127.0.0.1:{store.port}\r\nx-amz-date: d\r\n\r\n".encode()


@pytest.mark.parametrize("path, headers", [
    ("/b/caf\udce9", SIGNED[:-1]),  # a byte of the client's path that is not UTF-8 (aiohttp would drop it)
    ("/b/café", SIGNED[:-1]),  # not ASCII
    ("/b/k#fragment", SIGNED[:-1]),
    ("/b/k", (*SIGNED[:-1], (b"x-amz-meta-name", b"caf\xe9"))),  # a header that is not UTF-8
    ("/b/k", SIGNED),  # a header repeated under a name of another case (aiohttp would keep one of them)
])
async def test_a_request_that_cannot_go_out_as_it_is_is_not_sent(store, client, path, headers):
    assert await ask(client, request(store.port, path, headers)) is None
    assert store.seen == []


async def test_a_connection_whose_answer_was_read_to_its_end_is_kept_and_one_left_unread_is_dropped(store, client):
    small, large = "http://store.test:9000/b/small", "http://store.test:9000/b/large"
    store.answers.update({small: (200, {}, b"s" * 100), large: (200, {}, b"l" * 8 * 1024 * 1024)})  # more than aiohttp buffers
    for _ in range(2):
        answer = await ask(client, request(store.port, "/b/small"), keep_up_to=1000)
        assert answer is not None and answer.complete and answer.body == b"s" * 100
    assert store.connections == 1
    answer = await ask(client, request(store.port, "/b/large"), keep_up_to=1000)
    assert answer is not None and not answer.complete and answer.body == b""  # left unread
    answer = await ask(client, request(store.port, "/b/small"), keep_up_to=1000)
    assert answer is not None and answer.complete
    assert [seen.connection for seen in store.seen] == [1, 1, 1, 2]  # not the half-read connection


async def test_a_store_that_hangs_up_before_answering_is_asked_once(store, client):
    async def hang_up(seen, writer) -> None:
        pass

    store.answers["http://store.test:9000/b/k"] = hang_up
    assert await ask(client, request(store.port, "/b/k")) is None  # mitmproxy asks it then
    assert len(store.seen) == 1


async def test_an_errors_start_is_read_and_the_rest_left(store, client):
    store.answers["http://store.test:9000/b/k"] = (404, {"transfer-encoding": "chunked"}, b"<Error>" + b"x" * STORE_ERROR_BODY_LIMIT)
    answer = await ask(client, request(store.port, "/b/k"), keep_up_to=1000)
    assert answer is not None and answer.status == 404 and not answer.complete
    assert answer.body.startswith(b"<Error>") and STORE_ERROR_BODY_LIMIT < len(answer.body) <= 2 * STORE_ERROR_BODY_LIMIT


async def test_the_answers_headers_and_reason_are_kept_byte_for_byte(store, client):
    async def answer(seen, writer) -> None:
        writer.write(b"HTTP/1.1 200 Fine \xe9\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\nX-Meta: caf\xe9\r\n\r\nok")
        await writer.drain()

    store.answers["http://store.test:9000/b/k"] = answer
    got = await ask(client, request(store.port, "/b/k"), keep_up_to=10)
    assert got is not None and got.complete
    response = got.response()
    assert response.reason == "Fine \xe9" and response.raw_content == b"ok"
    assert response.headers.fields == ((b"Content-Length", b"2"), (b"X-A", b"1"), (b"x-a", b"2"), (b"X-Meta", b"caf\xe9"))


async def test_tls_is_verified_as_mitmproxy_does(tmp_path, store):
    ca = make_test_ca(tmp_path)
    port = await store.listen(tls=server_context(str(ca.server_cert), str(ca.server_key)))
    store.answers["https://store.test:9000/b/k"] = (200, {}, b"over tls")
    for verify, answered in ((True, False), (str(ca.ca_cert), True), (False, True)):  # certifi's CAs, the test CA, none
        client = StoreClient(verify)
        try:
            answer = await ask(client, request(port, "/b/k", scheme="https"), keep_up_to=100)
        finally:
            await client.aclose()
        assert (answer is not None and answer.body == b"over tls") is answered, verify


async def test_through_mitmproxys_upstream_proxy(store, client):
    """An http store is asked through the proxy in absolute form, the path as it is."""
    asked = tutils.treq(host="store.test", port=9000, method=b"GET", scheme=b"http", path=b"/b/./k", content=b"",
                        headers=((b"Host", b"store.test:9000"),))
    answer = await ask(client, asked, via=f"http://127.0.0.1:{store.port}")
    assert answer is not None and answer.status == 404
    assert store.seen[0].head.startswith(b"GET http://store.test:9000/b/./k HTTP/1.1\r\nHost: store.test:9000\r\n")
