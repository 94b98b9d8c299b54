"""Candidate (d): a pooled HTTP/1.1 client on asyncio streams and h11, written for the addon's needs."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import h11

from bench.clients.ask import Ask, Headers, Opened, Reading, insecure


class _Connection:
    __slots__ = ("reader", "writer", "h11", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.h11, self.reused = reader, writer, h11.Connection(h11.CLIENT), False

    async def next_event(self, timeout: float) -> Any:
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(1 << 18)
            self.h11.receive_data(data)
        return event


class H11Answer:
    """An answer's status and headers; `chunks()` the body as it arrives. The connection goes back
    to the pool when the body was read to its end, else it is closed."""

    def __init__(self, pool: H11Pool, key: tuple[object, ...], connection: _Connection, head: Any, read_timeout: float) -> None:
        self.status: int = head.status_code
        self.headers: Headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items())
        self._pool, self._key, self._connection, self._read_timeout = pool, key, connection, read_timeout
        self._ended = False

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            event = await connection.next_event(self._read_timeout)
            if type(event) is h11.Data:
                yield event.data
            elif type(event) is h11.EndOfMessage:
                self._ended = True
                return
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    def release(self) -> None:
        connection = self._connection
        if self._ended and connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE:
            connection.h11.start_next_cycle()
            connection.reused = True
            self._pool.idle.setdefault(self._key, []).append(connection)
        else:
            connection.writer.close()


class H11Pool(Reading):
    """Keep-alive connections per (scheme, address, port, TLS name, verification, proxy); no cookie
    jar, no redirects, no decompression: the request goes as described, the body comes as it is."""

    name = "h11 pool (d)"

    def __init__(self) -> None:
        self.idle: dict[tuple[object, ...], list[_Connection]] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def _context(self, verify: bool | ssl.SSLContext) -> ssl.SSLContext:
        if isinstance(verify, ssl.SSLContext):
            return verify
        if verify not in self._contexts:
            self._contexts[verify] = ssl.create_default_context() if verify else insecure()
        return self._contexts[verify]

    async def _connect(self, ask: Ask) -> _Connection:
        context = self._context(ask.verify) if ask.scheme == "https" else None
        name = (ask.sni or ask.host) if context else None
        async with asyncio.timeout(ask.connect_timeout):
            if ask.proxy is None:
                return _Connection(*await asyncio.open_connection(ask.host, ask.port, ssl=context, server_hostname=name, limit=1 << 18))
            proxy = urlsplit(ask.proxy)
            reader, writer = await asyncio.open_connection(proxy.hostname, proxy.port or 80, limit=1 << 18)
            if context is not None:  # a tunnel: CONNECT, then TLS inside it
                authority = f"[{ask.host}]:{ask.port}" if ":" in ask.host else f"{ask.host}:{ask.port}"
                writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
                reply = await reader.readuntil(b"\r\n\r\n")
                if reply.split(b" ", 2)[1:2] != [b"200"]:
                    writer.close()
                    raise ConnectionError(f"the proxy refused CONNECT {authority}: {reply.splitlines()[0]!r}")
                await writer.start_tls(context, server_hostname=name)
            return _Connection(reader, writer)

    @asynccontextmanager
    async def request(self, ask: Ask) -> AsyncIterator[H11Answer]:
        key = (ask.scheme, ask.host, ask.port, ask.sni, ask.verify, ask.proxy)
        target = ask.target
        if ask.proxy is not None and ask.scheme == "http":  # absolute-form to a proxy
            target = ask.url.encode("utf-8", "surrogateescape")
        request = h11.Request(method=ask.method, target=target, headers=list(ask.headers))
        while True:
            idle = self.idle.get(key)
            while idle and idle[-1].reader.at_eof():  # closed by the server while idle
                idle.pop().writer.close()
            connection = idle.pop() if idle else await self._connect(ask)
            try:
                connection.writer.write(connection.h11.send(request) or b"")  # no body: EndOfMessage adds nothing
                connection.h11.send(h11.EndOfMessage())
                head = await connection.next_event(ask.read_timeout)
                break
            except (h11.RemoteProtocolError, ConnectionError) as e:
                connection.writer.close()
                if not connection.reused or not isinstance(e, h11.RemoteProtocolError | ConnectionResetError | BrokenPipeError):
                    raise  # a kept-alive connection the server had closed: once more on another (GET, HEAD)
            except BaseException:
                connection.writer.close()
                raise
        answer = H11Answer(self, key, connection, head, ask.read_timeout)
        try:
            yield answer
        finally:
            answer.release()

    @asynccontextmanager
    async def _open(self, ask: Ask) -> AsyncIterator[Opened]:
        async with self.request(ask) as answer:
            yield Opened(answer.status, lambda: answer.headers, answer.chunks())

    async def aclose(self) -> None:
        for connections in self.idle.values():
            for connection in connections:
                connection.writer.close()
        self.idle.clear()
