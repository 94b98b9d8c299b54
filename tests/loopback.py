"""A scripted HTTP/1.1 server on loopback sockets, in the test's own event loop: what the proxy's
HTTP client (backorigin.httpclient) sends, as it arrived, and answers by URL. It listens on as
many addresses and ports as a test asks for, each plain or TLS (recording the TLS server name a
connection asked for), and keeps its connections alive."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

# status, headers, body; a "transfer-encoding: chunked" header sends the body chunked
Reply = tuple[int, Sequence[tuple[str, str]] | dict[str, str], bytes]
Script = Callable[["Seen", asyncio.StreamWriter], Awaitable[None]]  # writes an answer of its own


@dataclass
class Seen:
    """One request as it arrived."""

    method: str
    target: str
    headers: list[tuple[str, str]]  # in order, names as sent
    head: bytes  # the request line and headers, raw
    scheme: str
    local: str  # the address the connection arrived at
    connection: int  # the connection's number, in the order they were accepted
    sni: str | None  # the TLS server name the connection asked for

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def has(self, name: str) -> bool:
        return self.header(name) is not None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.header('host')}{self.target}"

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)


@dataclass
class Loopback:
    """`answers` maps a URL (scheme://Host-header + target) to a Reply or a Script; others get 404."""

    answers: dict[str, Reply | Script] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0  # the first port it listens on
    _servers: list[asyncio.Server] = field(default_factory=list)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _connections: int = 0
    _names: dict[int, str | None] = field(default_factory=dict)  # TLS server names, by id of the connection's SSLObject

    async def listen(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, port: int = 0) -> int:
        """Listens on host:port (a free port when 0); returns the port. `tls`: a context of this
        server's own (see server_context), which records the server names asked for."""
        if tls is not None:
            tls.sni_callback = self._record_name

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._connections += 1
            number = self._connections
            self._writers.add(writer)
            ssl_object = writer.get_extra_info("ssl_object")
            sni = self._names.get(id(ssl_object)) if ssl_object is not None else None
            try:
                await self._serve(reader, writer, "https" if tls else "http", writer.get_extra_info("sockname")[0], number, sni)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

        server = await asyncio.start_server(serve, host, port, ssl=tls)
        self._servers.append(server)
        port = int(server.sockets[0].getsockname()[1])
        self.port = self.port or port
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: str, local: str, number: int,
                     sni: str | None) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            line, *fields = head[:-4].decode("latin-1").split("\r\n")
            method, target, _ = line.split(" ", 2)
            headers = [(k, v.strip()) for k, _, v in (f.partition(":") for f in fields)]
            seen = Seen(method, target, headers, head, scheme, local, number, sni)
            self.seen.append(seen)
            answer = self.answers.get(seen.url, (404, {}, b""))
            if callable(answer):
                await answer(seen, writer)
                return
            status, given, body = answer
            pairs = list(given.items() if isinstance(given, dict) else given)
            chunked = any(k.lower() == "transfer-encoding" for k, _ in pairs)
            if not chunked and not any(k.lower() == "content-length" for k, _ in pairs):
                pairs.append(("Content-Length", str(len(body))))
            writer.write(f"HTTP/1.1 {status} Scripted\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in pairs)
                         + b"\r\n")
            if method != "HEAD":
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked and body else b"0\r\n\r\n" if chunked else body)
            await writer.drain()
            if (seen.header("connection") or "").lower() == "close":
                return

    def _record_name(self, ssl_object: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        self._names[id(ssl_object)] = name

    @property
    def connections(self) -> int:
        return self._connections

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for server in self._servers:
            await server.wait_closed()


def server_context(certificate: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    return context
