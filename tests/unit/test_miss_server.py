"""The loopback miss server: one-time tickets, answers streamed with backpressure, and a body
that breaks off resets the connection instead of passing for a short whole one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator

import httpx
import pytest

from backorigin.miss.fill import FillBroken
from backorigin.miss.server import TICKET_PREFIX, MissServer
from backorigin.s3.replies import Reply


async def chunks(*parts: bytes, broken: bool = False) -> AsyncGenerator[bytes, None]:
    for part in parts:
        yield part
    if broken:
        raise FillBroken("the origin's body broke off")


@pytest.fixture
async def server():
    server = MissServer()
    await server.ensure_started()
    yield server
    await server.stop()


async def test_a_ticket_answers_once_with_its_streamed_reply(server):
    async def serve() -> Reply:
        return Reply(200, [("content-length", "6"), ("etag", '"e"')], stream=chunks(b"abc", b"def"))

    path = server.issue(serve)
    assert path.startswith(TICKET_PREFIX)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        first = await client.get(path)
        assert first.status_code == 200 and first.content == b"abcdef" and first.headers["etag"] == '"e"'
        again = await client.get(path)
        assert again.status_code == 404 and again.content == b"no such ticket\n"
        assert (await client.get(TICKET_PREFIX + "made-up")).status_code == 404


async def test_a_head_and_a_body_at_hand_get_their_framing(server):
    async def head() -> Reply:
        return Reply(200, [("content-length", "1234")])

    async def small() -> Reply:
        return Reply(404, [("content-type", "application/xml")], b"<Error/>")

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        answered = await client.head(server.issue(head))
        assert answered.status_code == 200 and answered.headers["content-length"] == "1234" and answered.content == b""
        answered = await client.get(server.issue(small))
        assert answered.status_code == 404 and answered.content == b"<Error/>" and answered.headers["content-length"] == "8"


async def test_a_body_that_breaks_off_resets_the_connection(server):
    async def serve() -> Reply:
        return Reply(200, [("content-length", "6")], stream=chunks(b"abc", broken=True))

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.issue(serve))


async def test_a_streamed_answer_without_a_length_is_never_sent(server):
    """An HTTP/1.0 client reads a body without a length to the connection's end: one that broke
    off would look whole. So a streamed answer must declare its length; one that does not breaks."""
    async def serve() -> Reply:
        return Reply(200, [], stream=chunks(b"abc"))

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET " + server.issue(serve).encode() + b" HTTP/1.0\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_a_withdrawn_ticket_answers_nothing(server):
    async def serve() -> Reply:
        return Reply(200, [], b"x")

    path = server.issue(serve)
    server.withdraw(path)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        assert (await client.get(path)).status_code == 404


# A connection that must close once answered (the client sent Connection: close, or spoke
# HTTP/1.0; mitmproxy passes both on) is closed after the whole answer has gone out, never reset
# with its tail still in the server's buffer. Small socket buffers on both ends and a client that
# reads nothing until the server has handed over its last byte leave most of the answer there.
BUFFERED_BODY = 48 * 1024  # over what the small socket buffers hold, under asyncio's high-water mark (64 KiB)


async def unread_answer(server: MissServer, request: bytes) -> bytes:
    """The raw answer to `request` (its ticket's path at {path}), read only once the server has
    handed over the whole body of BUFFERED_BODY bytes, to the end of the connection."""
    handed_over = asyncio.Event()
    body = bytes(range(256)) * (BUFFERED_BODY // 256)

    async def stream() -> AsyncGenerator[bytes, None]:
        try:
            for start in range(0, len(body), 16 * 1024):
                yield body[start:start + 16 * 1024]
        finally:
            handed_over.set()

    async def serve() -> Reply:
        return Reply(200, [("content-length", str(len(body)))], stream=stream())

    path = server.issue(serve)
    assert server._server is not None
    server._server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted sockets inherit it
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connecting: the window stays small
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(request.replace(b"{path}", path.encode()))
        await asyncio.wait_for(handed_over.wait(), 10)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("request_", [
    b"GET {path} HTTP/1.1\r\nHost: miss\r\nConnection: close\r\n\r\n",
    b"GET {path} HTTP/1.0\r\n\r\n",
], ids=["connection-close", "http-1.0"])
async def test_an_answer_on_a_connection_that_must_close_goes_out_whole(server, request_):
    head, _, body = (await unread_answer(server, request_)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 49152" in head.lower()
    assert len(body) == BUFFERED_BODY and body == bytes(range(256)) * (BUFFERED_BODY // 256)
