"""Which HTTP client for the store check and the origin fetch (issue 21, item 2):
`.venv/bin/python -m bench.clients` (not part of `make test` or `make bench`).

Side by side in one run, against one nginx on 127.0.0.1 (HTTP/1.1 keep-alive, and HTTPS with a
certificate from a CA made for the run), four clients used the way the addon would use them:

  (a) httpx.AsyncHTTPTransport, as s3/storeclient.py and miss/origin.py use it now;
  (b) httpcore.AsyncConnectionPool, used directly;
  (c) aiohttp.ClientSession (C parser and writer; auto_decompress=False, DummyCookieJar, a
      TCPConnector with keep-alive), when aiohttp is installed (`pip install aiohttp`);
  (d) `H11Pool` below: a pooled HTTP/1.1 client on asyncio streams and h11 (under 150 lines).

Workloads: a 1 KiB GET read whole (one at a time, and 8 at once), a 404 with a 300-byte XML body,
an 8 MiB GET streamed chunk by chunk, and the 1 KiB and 8 MiB GETs over HTTPS. Every figure is CPU
time of this process (time.process_time: robust to other load on the machine) per request (per MiB
for 8 MiB) and requests/s, the median of --reps repetitions, clients interleaved within each one.
Then a feature checklist, each item checked against loopback servers where it can be: what the
addon needs from its client. Prints Markdown (BENCHMARKS.md, "Which HTTP client").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import gzip
import ipaddress
import os
import re
import resource
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import h11
import httpcore
import httpx

from bench.services import NGINX_BASICS, CpuPlan, Nginx, Processes, listen_ports, log, nginx_binary

KiB, MiB = 1 << 10, 1 << 20
ERROR_BODY_LIMIT = 1024  # as backorigin.limits.STORE_ERROR_BODY_LIMIT: enough of an error body
NOT_FOUND_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not '
                 'exist.</Message><Key>small/missing</Key><BucketName>bench</BucketName><Resource>/bench/small/missing</Resource>'
                 '<RequestId>17F0A1B2C3D4E5F6</RequestId><HostId>dd9025bab4ad464b049177c95eb6ebf3</HostId></Error>')


# ---------------------------------------------------------------------------------------
# One request, as the addon would describe it to any client


@dataclass(frozen=True)
class Ask:
    method: str
    scheme: str
    host: str  # where to connect: the URL's host, or the address it was pinned to
    port: int
    target: bytes  # path and query, raw, sent as they are
    headers: tuple[tuple[bytes, bytes], ...]  # in order, duplicates kept, Host among them
    sni: str | None = None  # TLS server name (and certificate name) when it is not `host`
    verify: bool | ssl.SSLContext = True  # as store.upstream_verification: on, off, or a custom CA
    proxy: str | None = None  # an HTTP upstream proxy, http://host:port
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.target.decode('utf-8', 'surrogateescape')}"


Headers = tuple[tuple[str, str], ...]  # what StoreAnswer and OriginResult keep
Sink = Callable[[bytes], None]


class Candidate(Protocol):
    name: str

    async def whole(self, ask: Ask, limit: int) -> tuple[int, Headers, bytes]:
        """Status, headers, and the body up to `limit` bytes (StoreClient.ask's error body)."""
        ...

    async def stream(self, ask: Ask, sink: Sink) -> int:
        """Status; the body goes to `sink` chunk by chunk as it arrives (OriginClient._read)."""
        ...

    async def aclose(self) -> None: ...


def _timeouts(ask: Ask) -> dict[str, float]:
    return {"connect": ask.connect_timeout, "read": ask.read_timeout, "write": ask.read_timeout, "pool": ask.connect_timeout}


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Opened:
    """An answer as a candidate opened it: `headers()` decodes them only when asked (a streamed
    body never needs them); `chunks` the raw body as it arrives."""

    status: int
    headers: Callable[[], Headers]
    chunks: AsyncIterator[bytes]


class Reading:
    """`whole` and `stream` for every candidate that can open an answer (`_open`)."""

    def _open(self, ask: Ask) -> Any:  # an async context manager of Opened
        raise NotImplementedError

    async def whole(self, ask: Ask, limit: int) -> tuple[int, Headers, bytes]:
        async with self._open(ask) as answer:
            body = b""
            async for chunk in answer.chunks:
                body += chunk
                if len(body) > limit:
                    break
            return answer.status, answer.headers(), body

    async def stream(self, ask: Ask, sink: Sink) -> int:
        async with self._open(ask) as answer:
            async for chunk in answer.chunks:
                sink(chunk)
            return answer.status


# ---------------------------------------------------------------------------------------
# (a) httpx's transport, as store.py and origin.py use it


class HttpxTransport(Reading):
    name = "httpx transport"

    def __init__(self) -> None:
        self._transports: dict[tuple[object, str | None], httpx.AsyncHTTPTransport] = {}

    def _transport(self, ask: Ask) -> httpx.AsyncHTTPTransport:
        key = (ask.verify, ask.proxy)
        if key not in self._transports:
            self._transports[key] = httpx.AsyncHTTPTransport(verify=ask.verify, proxy=ask.proxy,
                                                             limits=httpx.Limits(max_connections=None))
        return self._transports[key]

    @asynccontextmanager
    async def _open(self, ask: Ask) -> AsyncIterator[Opened]:
        extensions: dict[str, Any] = {"timeout": _timeouts(ask)}
        if ask.sni:
            extensions["sni_hostname"] = ask.sni
        url = httpx.URL(scheme=ask.scheme, host=ask.host, port=ask.port, raw_path=ask.target)
        response = await self._transport(ask).handle_async_request(
            httpx.Request(ask.method, url, headers=list(ask.headers), extensions=extensions))
        try:
            yield Opened(response.status_code, lambda: tuple(response.headers.multi_items()), response.aiter_raw())
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


# ---------------------------------------------------------------------------------------
# (b) httpcore's pool, used directly


class HttpcorePool(Reading):
    name = "httpcore pool"

    def __init__(self) -> None:
        self._pools: dict[tuple[object, str | None], httpcore.AsyncConnectionPool] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def _pool(self, ask: Ask) -> httpcore.AsyncConnectionPool:
        key = (ask.verify, ask.proxy)
        if key not in self._pools:
            if isinstance(ask.verify, ssl.SSLContext):
                context = ask.verify
            else:
                context = self._contexts.setdefault(ask.verify, httpx.create_ssl_context(verify=ask.verify))
            proxy = httpcore.Proxy(ask.proxy) if ask.proxy else None
            self._pools[key] = httpcore.AsyncConnectionPool(ssl_context=context, proxy=proxy, max_connections=None)
        return self._pools[key]

    @asynccontextmanager
    async def _open(self, ask: Ask) -> AsyncIterator[Opened]:
        extensions: dict[str, Any] = {"timeout": _timeouts(ask)}
        if ask.sni:
            extensions["sni_hostname"] = ask.sni
        url = httpcore.URL(scheme=ask.scheme.encode(), host=ask.host.encode(), port=ask.port, target=ask.target)
        response = await self._pool(ask).handle_async_request(
            httpcore.Request(ask.method.encode(), url, headers=list(ask.headers), extensions=extensions))
        try:
            yield Opened(response.status, lambda: tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
                         response.aiter_stream())
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


# ---------------------------------------------------------------------------------------
# (c) aiohttp


class Aiohttp(Reading):
    name = "aiohttp"

    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    def _request(self, ask: Ask) -> Any:
        aiohttp = self._aiohttp
        if self._session is None:  # made in the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ssl=True),
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"), requote_redirect_url=False)
        key = (ask.connect_timeout, ask.read_timeout)
        if key not in self._timeouts:
            self._timeouts[key] = aiohttp.ClientTimeout(total=None, sock_connect=ask.connect_timeout, sock_read=ask.read_timeout)
        import yarl

        return self._session.request(
            ask.method, yarl.URL(ask.url, encoded=True), headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in ask.headers],
            allow_redirects=False, timeout=self._timeouts[key], ssl=ask.verify, server_hostname=ask.sni, proxy=ask.proxy)

    @asynccontextmanager
    async def _open(self, ask: Ask) -> AsyncIterator[Opened]:
        async with self._request(ask) as response:
            yield Opened(int(response.status), lambda: tuple(response.headers.items()), response.content.iter_any())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


# ---------------------------------------------------------------------------------------
# (d) a pooled HTTP/1.1 client on asyncio streams and h11


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
            self._contexts[verify] = ssl.create_default_context() if verify else _insecure()
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


# ---------------------------------------------------------------------------------------
# The floor, for reference only (not a candidate, not in the checklist)


class Floor:
    """asyncio streams, the request written as it is, the answer's Content-Length found by hand and
    the body read: what any client on asyncio pays in the event loop and the kernel."""

    name = "floor: bare streams"
    reference = True

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def _exchange(self, ask: Ask, sink: Sink) -> int:
        idle = self._idle.setdefault((ask.scheme, ask.host, ask.port), [])
        while idle and idle[-1][0].at_eof():  # closed by the server while idle
            idle.pop()[1].close()
        if idle:
            reader, writer = idle.pop()
        else:
            context = ask.verify if isinstance(ask.verify, ssl.SSLContext) and ask.scheme == "https" else None
            reader, writer = await asyncio.open_connection(ask.host, ask.port, ssl=context, limit=1 << 18)
        writer.write(b"%s %s HTTP/1.1\r\n%s\r\n" % (ask.method.encode(), ask.target,
                                                     b"".join(b"%s: %s\r\n" % header for header in ask.headers)))
        head = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        left = int(found.group(1)) if found else 0
        while left:
            chunk = await reader.read(min(left, 1 << 18))
            if not chunk:
                raise ConnectionError("closed")
            left -= len(chunk)
            sink(chunk)
        idle.append((reader, writer))
        return int(head[9:12])

    async def whole(self, ask: Ask, limit: int) -> tuple[int, Headers, bytes]:
        body = bytearray()
        status = await self._exchange(ask, body.extend)
        return status, (), bytes(body)

    async def stream(self, ask: Ask, sink: Sink) -> int:
        return await self._exchange(ask, sink)

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()


def candidates() -> list[Candidate]:
    found: list[Candidate] = [HttpxTransport(), HttpcorePool()]
    try:
        found.append(Aiohttp())
    except ImportError:
        log("aiohttp is not installed (.venv/bin/pip install aiohttp): its column is left out")
    found.append(H11Pool())
    found.append(Floor())
    return found


# ---------------------------------------------------------------------------------------
# The servers: nginx (HTTP and HTTPS), and for the checklist a recording server and proxy


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a CA made for this run, and a server
    certificate for 127.0.0.1, origin.test and other.test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.clients CA")])
    usage = {name: False for name in ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                                      "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")}
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(**{**usage, "key_cert_sign": True, "crl_sign": True}), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = [x509.DNSName("origin.test"), x509.DNSName("other.test"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**{**usage, "digital_signature": True}), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def nginx_config(http_port: int, https_port: int, root: Path, certificate: Path, key: Path) -> str:
    body = NOT_FOUND_XML.replace("'", "\\'")
    return f"""
http {{{NGINX_BASICS}
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} ssl backlog=4096;
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        root {root};
        location /small/ {{ try_files /small.bin =404; }}
        location /large/ {{ try_files /large.bin =404; }}
        location /gz/ {{ add_header Content-Encoding gzip; try_files /body.gz =404; }}
        location /missing/ {{ default_type application/xml; return 404 '{body}'; }}
        location /sni {{ default_type text/plain; return 200 "$ssl_server_name|$host"; }}
    }}
}}
"""


class Recorder:
    """A loopback HTTP/1.1 server that keeps every request head as it arrived. /cookie sets a
    cookie, /hang never answers, anything else is a 200 'ok'."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                target = head.split(b" ", 2)[1]
                if target.startswith(b"/hang"):
                    await reader.read()
                    return
                cookie = b"Set-Cookie: session=s3cr3t; Path=/\r\n" if target.startswith(b"/cookie") else b""
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + cookie + b"\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class RecordingProxy(Recorder):
    """An HTTP proxy that keeps each request line: CONNECT opens a tunnel; a request in absolute
    form is answered 'proxied' (not forwarded)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            self.heads.append(line)
            method, target, _ = line.split(b" ", 2)
            if method != b"CONNECT":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nproxied")
                await writer.drain()
                return
            host, _, port = target.decode().rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            self._writers.add(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(source: asyncio.StreamReader, to: asyncio.StreamWriter) -> None:
                while data := await source.read(1 << 16):
                    to.write(data)
                    await to.drain()
                to.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# ---------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    count: int  # requests per repetition
    ask: Ask
    streamed: bool = False
    concurrency: int = 1
    status: int = 200
    size: int = KiB

    @property
    def per_mib(self) -> bool:
        return self.size >= MiB


@dataclass
class Sample:
    cpu: float  # seconds of process CPU (time.process_time: user + system)
    system: float  # of which in the kernel (getrusage): sockets, TLS records are user time
    wall: float
    requests: int
    size: int

    @property
    def units(self) -> float:  # requests, or MiB for large bodies
        return self.requests * self.size / MiB if self.size >= MiB else self.requests

    @property
    def cpu_ms(self) -> float:
        return self.cpu * 1000 / self.units

    @property
    def system_ms(self) -> float:
        return self.system * 1000 / self.units

    @property
    def per_second(self) -> float:
        return self.units / self.wall


# the headers an S3 client's signed GET carries (StoreClient.ask forwards them as they are)
S3_HEADERS = (
    (b"User-Agent", b"aws-cli/1.36.0 md/Botocore#1.36.0 ua/2.0 os/linux#6.1 md/arch#x86_64 lang/python#3.11.7"),
    (b"Accept-Encoding", b"identity"),
    (b"X-Amz-Date", b"20260101T000000Z"),
    (b"X-Amz-Content-SHA256", b"UNSIGNED-PAYLOAD"),
    (b"Authorization", b"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/s3/aws4_request, "
                       b"SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
                       b"Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"),
)


def workloads(http_port: int, https_port: int, context: ssl.SSLContext, scale: float) -> list[Workload]:
    def ask(scheme: str, port: int, target: str) -> Ask:
        return Ask("GET", scheme, "127.0.0.1", port, target.encode(), ((b"Host", f"127.0.0.1:{port}".encode()), *S3_HEADERS),
                   verify=context if scheme == "https" else True)

    def n(count: int) -> int:
        return max(1, round(count * scale))

    return [
        Workload("small", "1 KiB GET, read whole, sequential", n(2000), ask("http", http_port, "/small/k")),
        Workload("small8", "1 KiB GET, read whole, 8 concurrent", n(2000), ask("http", http_port, "/small/k"), concurrency=8),
        Workload("404", "404 + 300 B XML body, read whole", n(1500), ask("http", http_port, "/missing/k"), status=404,
                 size=len(NOT_FOUND_XML)),
        Workload("large", "8 MiB GET, streamed (per MiB)", n(24), ask("http", http_port, "/large/k"), streamed=True, size=8 * MiB),
        Workload("tls-small", "HTTPS 1 KiB GET, sequential", n(1500), ask("https", https_port, "/small/k")),
        Workload("tls-large", "HTTPS 8 MiB GET, streamed (per MiB)", n(12), ask("https", https_port, "/large/k"), streamed=True,
                 size=8 * MiB),
    ]


async def run_once(client: Candidate, workload: Workload, count: int) -> None:
    ask, size = workload.ask, 0

    def sink(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)

    async def one() -> None:
        nonlocal size
        if workload.streamed:
            status = await client.stream(ask, sink)
        else:
            status, _, body = await client.whole(ask, ERROR_BODY_LIMIT if workload.status >= 400 else workload.size)
            size += len(body)
        if status != workload.status:
            raise RuntimeError(f"{client.name}: {workload.name} answered {status}")

    async def worker(requests: int) -> None:
        for _ in range(requests):
            await one()

    share = count // workload.concurrency
    await asyncio.gather(*(worker(share) for _ in range(workload.concurrency)))
    if size != share * workload.concurrency * workload.size:
        raise RuntimeError(f"{client.name}: {workload.name}: {size} bytes, not {share * workload.concurrency * workload.size}")


async def measure(client: Candidate, workload: Workload) -> Sample:
    await run_once(client, workload, max(workload.concurrency, workload.count // 20))  # warm: connections, caches
    gc.collect()
    cpu, system, wall = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
    await run_once(client, workload, workload.count)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - system
    return Sample(cpu, system, wall, workload.count // workload.concurrency * workload.concurrency, workload.size)


# ---------------------------------------------------------------------------------------
# The checklist


@dataclass(frozen=True)
class Servers:
    http_port: int
    https_port: int
    ca: ssl.SSLContext
    recorder: Recorder
    proxy: RecordingProxy
    gz_body: bytes


async def _check(step: Callable[[], Awaitable[str]]) -> str:
    try:
        return await step()
    except Exception as e:  # the checklist reports what failed
        return f"no: {type(e).__name__}: {str(e)[:80]}"


def _head_lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:-2]


async def checklist(client: Candidate, servers: Servers) -> dict[str, str]:
    recorder, rec_port = servers.recorder, servers.recorder.port

    def to_recorder(target: bytes, *headers: tuple[bytes, bytes], **changes: Any) -> Ask:
        return replace(Ask("GET", "http", "127.0.0.1", rec_port, target, ((b"Host", f"127.0.0.1:{rec_port}".encode()), *headers)),
                       **changes)

    async def sent(ask: Ask) -> bytes:
        before = len(recorder.heads)
        await client.whole(ask, 100)
        return recorder.heads[before]

    async def raw_path() -> str:
        target = b"/b//a/./c/../d%2Fe%20f%7e?x=1&y=%7E&z"  # S3 keys may hold any of these
        line = (await sent(to_recorder(target))).split(b"\r\n", 1)[0]
        return "yes" if line == b"GET " + target + b" HTTP/1.1" else f"NO: sent {line!r}"

    async def non_ascii() -> str:
        target = "/b/caf\udce9".encode("utf-8", "surrogateescape")  # b"/b/caf\xe9": mitmproxy's surrogate-escaped byte
        try:
            head = await sent(to_recorder(target))
        except Exception as e:
            return f"refused ({type(e).__name__})"
        line = head.split(b"\r\n", 1)[0]
        return "sent as is" if line == b"GET " + target + b" HTTP/1.1" else f"ALTERED: sent {line!r}"

    async def header_order() -> str:
        mine = [(b"X-Dup", b"1"), (b"x-amz-date", b"2"), (b"X-Dup", b"3"), (b"authorization", b"A")]
        lines = _head_lines(await sent(to_recorder(b"/h", *mine)))
        got = [tuple(line.split(b": ", 1)) for line in lines]
        added = sorted({k.decode() for k, _ in got if k.lower() not in {b"host", *(m[0].lower() for m in mine)}})
        ours = [(k, v) for k, v in got if k.lower() != b"host"]
        ours = [h for h in ours if h[0].lower() in {m[0].lower() for m in mine}]
        if ours == mine:
            verdict = "yes, names' case kept"
        elif [(k.lower(), v) for k, v in ours] == [(k.lower(), v) for k, v in mine]:
            verdict = "order and duplicates yes; names lower-cased"
        else:
            verdict = f"no: {ours!r}"
        return verdict + (f"; adds {', '.join(added)}" if added else "; adds nothing")

    async def cookies() -> str:
        await sent(to_recorder(b"/cookie"))
        head = await sent(to_recorder(b"/after"))
        return "no cookie kept" if b"cookie:" not in head.lower() else "NO: a cookie was sent back"

    async def read_timeout() -> str:
        started = time.monotonic()
        try:
            await client.whole(to_recorder(b"/hang", read_timeout=0.3), 100)
        except Exception as e:
            return f"yes ({type(e).__name__} after {time.monotonic() - started:.1f} s)"
        return "no: answered"

    async def connect_timeout() -> str:
        # a listener whose accept queue is full: the kernel drops the SYN, the connect hangs (loopback only)
        import socket

        with socket.socket() as listener, socket.socket() as filler:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            filler.connect(("127.0.0.1", port))
            started = time.monotonic()
            try:
                await asyncio.wait_for(client.whole(to_recorder(b"/", port=port, connect_timeout=0.3), 100), 5)
            except TimeoutError as e:
                if time.monotonic() - started >= 4.5:
                    return "NO: still connecting after 5 s"
                return f"yes ({type(e).__name__} after {time.monotonic() - started:.1f} s)"
            except Exception as e:
                return f"yes ({type(e).__name__} after {time.monotonic() - started:.1f} s)"
            return "no: connected"

    def to_nginx(target: bytes, scheme: str = "https", **changes: Any) -> Ask:
        port = servers.https_port if scheme == "https" else servers.http_port
        return replace(Ask("GET", scheme, "127.0.0.1", port, target, ((b"Host", f"127.0.0.1:{port}".encode()),)), **changes)

    async def tls() -> str:
        verdicts = []
        try:
            await client.whole(to_nginx(b"/small/k", verify=True), 2000)
            verdicts.append("on: ACCEPTED an unknown CA")
        except Exception as e:
            verdicts.append(f"on: refused ({type(e).__name__})")
        status, _, _ = await client.whole(to_nginx(b"/small/k", verify=False), 2000)
        verdicts.append(f"off: {status}")
        status, _, _ = await client.whole(to_nginx(b"/small/k", verify=servers.ca), 2000)
        verdicts.append(f"custom CA: {status}")
        return "; ".join(verdicts)

    async def proxy() -> str:
        proxy_url = f"http://127.0.0.1:{servers.proxy.port}"
        before = len(servers.proxy.heads)
        _, _, body = await client.whole(to_nginx(b"/small/k?a=1", "http", proxy=proxy_url), 2000)
        status, _, tunneled = await client.whole(to_nginx(b"/small/k", proxy=proxy_url, verify=servers.ca), 2000)
        lines = [line.decode() for line in servers.proxy.heads[before:]]
        absolute = lines[0] == f"GET http://127.0.0.1:{servers.http_port}/small/k?a=1 HTTP/1.1" and body == b"proxied"
        connect = len(lines) > 1 and lines[1].startswith(f"CONNECT 127.0.0.1:{servers.https_port} ") and len(tunneled) == KiB
        return f"http absolute-form: {'yes' if absolute else 'NO ' + repr(lines)}; https CONNECT: {'yes' if connect else 'NO'}"

    async def pinned() -> str:
        # a context of its own, so that no connection of an earlier check (same address, no SNI) is reused
        context = ssl.create_default_context(cadata=servers.ca.get_ca_certs(binary_form=True)[0])
        seen = []
        for name in ("origin.test", "other.test"):  # one address, two names: a connection each?
            host = f"{name}:{servers.https_port}".encode()
            _, _, body = await client.whole(replace(to_nginx(b"/sni", verify=context, sni=name), headers=((b"Host", host),)), 200)
            seen.append(body.decode())
        if seen == ["origin.test|origin.test", "other.test|other.test"]:
            return "yes (and the TLS name is part of the pool key)"
        if seen[0] == "origin.test|origin.test":
            return f"yes on a new connection; but a kept-alive one is REUSED for another TLS name (nginx saw {seen[1]!r})"
        return f"NO: nginx saw {seen}"

    async def streaming() -> str:
        sizes: list[int] = []
        status = await client.stream(to_nginx(b"/large/k", "http"), lambda chunk: sizes.append(len(chunk)))
        if status != 200 or sum(sizes) != 8 * MiB:
            return f"no: {status}, {sum(sizes)} bytes"
        return f"yes ({len(sizes)} chunks, up to {max(sizes) // KiB} KiB)"

    async def no_gunzip() -> str:
        _, headers, body = await client.whole(to_nginx(b"/gz/k", "http"), 1 << 20)
        return "yes (raw gzip bytes)" if body == servers.gz_body else f"NO: {len(body)} bytes, not the {len(servers.gz_body)} sent"

    async def head_then_get() -> str:
        status, headers, body = await client.whole(replace(to_nginx(b"/small/k", "http"), method="HEAD"), 2000)
        again, _, second = await client.whole(to_nginx(b"/small/k", "http"), 2000)
        return "yes" if (status, body, again, len(second)) == (200, b"", 200, KiB) else f"no: {status} {len(body)} {again}"

    checks: dict[str, Callable[[], Awaitable[str]]] = {
        "raw path sent unchanged ('/b//a/./c/../d%2Fe%20f%7e?x=1&y=%7E&z')": raw_path,
        "path with a surrogate-escaped byte (b'\\xe9')": non_ascii,
        "header order, duplicates, case": header_order,
        "no cookie jar (Set-Cookie, then another request)": cookies,
        "per-request read timeout (0.3 s, server silent)": read_timeout,
        "per-request connect timeout (0.3 s, SYN dropped)": connect_timeout,
        "TLS verify on (unknown CA) / off / custom CA": tls,
        "HTTP upstream proxy": proxy,
        "pinned IP + other Host + SNI (nginx echoes $ssl_server_name|$host)": pinned,
        "body streamed in chunks (8 MiB)": streaming,
        "gzip not decompressed (Content-Encoding: gzip)": no_gunzip,
        "HEAD, then GET on the kept-alive connection": head_then_get,
    }
    return {name: await _check(step) for name, step in checks.items()}


PACING = {  # the supported place for backfill's --max-rps / --max-bandwidth (tools/backfill.PacedTransport now)
    HttpxTransport.name: "a transport wrapper (httpx.AsyncBaseTransport), as backfill.PacedTransport was",
    HttpcorePool.name: "a wrapper of the pool (httpcore.AsyncConnectionInterface); or in OriginClient",
    Aiohttp.name: "ClientSession(middlewares=...) (awaited per request) or TraceConfig; bytes: in the read loop",
    H11Pool.name: "none needed: the client is ours; pace in OriginClient._send/_read (a Pacer argument)",
}


# ---------------------------------------------------------------------------------------
# The run


def _busy_jiffies() -> int:
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle and iowait


def _own_jiffies(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total


def _nginx_pids(master: int) -> list[int]:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        children = []
    return [master, *map(int, children)]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _spread(values: list[float], digits: int) -> str:
    middle = statistics.median(values)
    if len(values) < 2:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


async def bench(args: argparse.Namespace, http_port: int, https_port: int, ca_file: Path, gz_body: bytes,
                nginx_pids: Callable[[], list[int]]) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    clients = candidates()
    names = [c.name for c in clients]
    chosen = [w for w in workloads(http_port, https_port, context, args.scale) if not args.only or w.name in args.only]
    samples: dict[tuple[str, str], list[Sample]] = {}
    hz = os.sysconf("SC_CLK_TCK")
    busy, own, started = _busy_jiffies(), _own_jiffies([os.getpid(), *nginx_pids()]), time.monotonic()
    try:
        for rep in range(args.reps):
            for workload in chosen:
                order = clients[rep % len(clients):] + clients[:rep % len(clients)]  # a different client first each time
                for client in order:
                    sample = await measure(client, workload)
                    samples.setdefault((workload.name, client.name), []).append(sample)
                    log(f"rep {rep + 1}/{args.reps} {workload.name:9} {client.name:16} {sample.cpu_ms:7.3f} ms CPU "
                        f"{sample.per_second:9.1f} /s")
        elapsed = time.monotonic() - started
        others = ((_busy_jiffies() - busy) - (_own_jiffies([os.getpid(), *nginx_pids()]) - own)) / hz / elapsed
        out = [f"Median of {args.reps} repetitions (min-max), clients interleaved; nginx and this process on separate CPUs "
               f"unless --no-pin; other load on the machine meanwhile: {max(others, 0.0):.2f} cores. Per request; per MiB "
               "for the 8 MiB rows.", ""]

        def median(workload: Workload, name: str, figure: Callable[[Sample], float]) -> float:
            return statistics.median([figure(sample) for sample in samples[workload.name, name]])

        tables = [
            ("CPU of this process, ms", lambda w, n: _spread([x.cpu_ms for x in samples[w.name, n]], 3)),
            ("Requests/s (MiB/s for 8 MiB)", lambda w, n: f"{median(w, n, lambda x: x.per_second):.0f}"),
            (f"CPU ÷ {names[0]}'s", lambda w, n: f"{median(w, n, lambda x: x.cpu_ms) / median(w, names[0], lambda x: x.cpu_ms):.2f}"),
            ("Of the CPU, in the kernel (system time), ms", lambda w, n: f"{median(w, n, lambda x: x.system_ms):.3f}"),
        ]
        for title, cell in tables:
            out += [f"**{title}**", "", _table(["workload", *names], [[w.label, *(cell(w, n) for n in names)] for w in chosen]), ""]

        if not args.no_checklist:
            recorder, proxy = await Recorder().start(), await RecordingProxy().start()
            try:
                servers = Servers(http_port, https_port, context, recorder, proxy, gz_body)
                found = {c.name: await checklist(c, servers) for c in clients if not getattr(c, "reference", False)}
            finally:
                await recorder.close()
                await proxy.close()
            checked = list(found)
            rows = [[feature, *(found[n][feature] for n in checked)] for feature in found[checked[0]]]
            rows.append(["pacing hook (backfill)", *(PACING[n] for n in checked)])
            out += ["**What the addon needs**", "", _table(["feature", *checked], rows)]
        return "\n".join(out)
    finally:
        for client in clients:
            await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every workload (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's request count (default 1)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help="comma-separated workloads: small,small8,404,large,tls-small,tls-large")
    parser.add_argument("--no-pin", action="store_true", help="do not put nginx and this process on separate CPUs")
    parser.add_argument("--no-checklist", action="store_true", help="measure only")
    args = parser.parse_args(argv)
    if not Path(nginx_binary()).exists():
        raise SystemExit("bench.clients: needs nginx (apt-get install nginx)")
    plan = CpuPlan.make(not args.no_pin)
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as folder:
        tmp = Path(folder)
        os.chmod(tmp, 0o755)
        root = tmp / "www"
        root.mkdir()
        (root / "small.bin").write_bytes(os.urandom(KiB))
        (root / "large.bin").write_bytes(os.urandom(8 * MiB))
        gz_body = gzip.compress(b"backorigin " * 1000)
        (root / "body.gz").write_bytes(gz_body)
        ca, certificate, key = make_certificates(tmp)
        http_port, https_port = listen_ports(2)
        try:
            nginx = Nginx("clients", tmp / "nginx", nginx_config(http_port, https_port, root, certificate, key),
                          cpus=plan.rest).start(processes, [http_port, https_port])
            if plan.proxy:
                os.sched_setaffinity(0, plan.proxy)
            log(f"nginx on 127.0.0.1:{http_port} (HTTP) and :{https_port} (HTTPS); {plan.describe().replace('proxy', 'client')}")
            assert nginx.process is not None
            master = nginx.process.pid
            report = asyncio.run(bench(args, http_port, https_port, ca, gz_body, lambda: _nginx_pids(master)))
        finally:
            processes.close()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
