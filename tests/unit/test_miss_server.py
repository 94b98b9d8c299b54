"""The loopback miss server: one-time tickets, answers streamed with backpressure, and a body
that breaks off resets the connection instead of passing for a short whole one."""

from __future__ import annotations

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


async def test_a_withdrawn_ticket_answers_nothing(server):
    async def serve() -> Reply:
        return Reply(200, [], b"x")

    path = server.issue(serve)
    server.withdraw(path)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        assert (await client.get(path)).status_code == 404
