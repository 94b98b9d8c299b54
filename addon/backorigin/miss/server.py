"""The loopback miss server: where the request hook re-routes a missed GET or HEAD, so that
mitmproxy streams its answer (mitmproxy 11 streams a body only from a server connection).

It listens on 127.0.0.1 on a free port, inside mitmproxy's event loop, and serves only
tickets: one-time random paths that the request hook issues for a miss it has decided. The
answer comes from `delivery.respond`, streamed with backpressure, and always declares its
length. A connection ends in one of two ways: once its answer is whole (or none is owed) it is
closed after everything buffered has gone out; an answer that can no longer be finished (an
origin body that broke off after the headers went out) is aborted, so mitmproxy sees the
connection end before the declared length and breaks the client's connection or HTTP/2 stream:
the client sees a broken answer, never a short one that looks whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import h11
from mitmproxy.net.http import status_codes

from backorigin.miss.fill import FillBroken
from backorigin.s3.replies import Reply

logger = logging.getLogger(__name__)

Serve = Callable[[], Awaitable[Reply]]
TICKET_PREFIX = "/backorigin-miss/"
RECEIVE = 64 * 1024
# Where the connection stands when nothing is owed: no request pending (IDLE), or the answer whole,
# kept open for the next request (DONE) or to be closed (MUST_CLOSE: the request said Connection:
# close, or was HTTP/1.0; mitmproxy passes on what the client sent).
ANSWERED = frozenset({h11.IDLE, h11.DONE, h11.MUST_CLOSE})


class MissServer:
    def __init__(self) -> None:
        self._tickets: dict[str, Serve] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def ensure_started(self) -> None:
        """Listen, the first time it is needed (a script's running hook cannot await)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def issue(self, serve: Serve) -> str:
        """A one-time path that answers with `serve()`."""
        path = TICKET_PREFIX + secrets.token_urlsafe(16)
        self._tickets[path] = serve
        return path

    def withdraw(self, path: str) -> None:
        self._tickets.pop(path, None)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next_request(connection, reader)
                if request is None:
                    return
                await self._answer(connection, writer, request)
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, FillBroken) as e:
            logger.debug("miss server connection ended: %s", e)
        except asyncio.CancelledError:  # shutdown: mitmproxy has let go of its connections
            pass
        finally:
            if connection.our_state in ANSWERED:  # what is still buffered goes out before the connection closes
                writer.close()
            else:  # mid-answer: dropped unsent, so the answer ends short of its length and can never pass for whole
                writer.transport.abort()

    async def _answer(self, connection: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request) -> None:
        target = request.target.decode("ascii", "replace")
        serve = self._tickets.pop(urlsplit(target).path if target.startswith("http") else target, None)
        if serve is None:
            reply = Reply(404, [("content-type", "text/plain")], b"no such ticket\n")
        else:
            reply = await serve()
        # without a length, a stream that breaks off would end like a whole body (HTTP/1.0 reads to the close)
        assert reply.stream is None or reply.has_length(), "a streamed answer declares its Content-Length"
        headers = [(k.encode("latin-1"), v.encode("utf-8", "surrogateescape")) for k, v in reply.headers]
        if reply.stream is None and reply.status not in (204, 304) and not reply.has_length():
            headers.append((b"content-length", str(len(reply.body)).encode()))
        reason = status_codes.RESPONSES.get(reply.status, "").encode()
        send(connection, writer, h11.Response(status_code=reply.status, headers=headers, reason=reason))
        if request.method != b"HEAD":
            if reply.stream is not None:
                async with contextlib.aclosing(reply.stream) as chunks:
                    async for chunk in chunks:
                        send(connection, writer, h11.Data(data=chunk))
                        await writer.drain()
            elif reply.body:
                send(connection, writer, h11.Data(data=reply.body))
        send(connection, writer, h11.EndOfMessage())
        await writer.drain()


def send(connection: h11.Connection, writer: asyncio.StreamWriter, event: h11.Event) -> None:
    data = connection.send(event)
    assert data is not None  # None only for ConnectionClosed, which is never sent here
    writer.write(data)


async def _next_request(connection: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The next request on the connection, its (empty) body read; None when it closes."""
    request = None
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(RECEIVE))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
