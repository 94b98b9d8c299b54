"""What the addon needs from its HTTP client, each item checked against loopback servers: the
request sent as described (raw path, header order, no cookie jar), per-request timeouts, TLS
verification and pinning, an upstream proxy, streaming, no decompression, kept-alive reuse.
Each check is a function of the client and the servers that returns its verdict."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from bench.clients.ask import Ask, Candidate
from bench.clients.h11pool import H11Pool
from bench.clients.libraries import Aiohttp, HttpcorePool, HttpxTransport
from bench.clients.servers import Recorder, RecordingProxy

KiB, MiB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Servers:
    http_port: int
    https_port: int
    ca: ssl.SSLContext
    recorder: Recorder
    proxy: RecordingProxy
    gz_body: bytes

    def to_recorder(self, target: bytes, *headers: tuple[bytes, bytes], **changes: Any) -> Ask:
        port = self.recorder.port
        return replace(Ask("GET", "http", "127.0.0.1", port, target, ((b"Host", f"127.0.0.1:{port}".encode()), *headers)),
                       **changes)

    def to_nginx(self, target: bytes, scheme: str = "https", **changes: Any) -> Ask:
        port = self.https_port if scheme == "https" else self.http_port
        return replace(Ask("GET", scheme, "127.0.0.1", port, target, ((b"Host", f"127.0.0.1:{port}".encode()),)), **changes)

    async def sent(self, client: Candidate, ask: Ask) -> bytes:
        """The request head the recorder received for `ask`."""
        before = len(self.recorder.heads)
        await client.whole(ask, 100)
        return self.recorder.heads[before]


Check = Callable[[Candidate, Servers], Awaitable[str]]


def _head_lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:-2]


async def raw_path(client: Candidate, servers: Servers) -> str:
    target = b"/b//a/./c/../d%2Fe%20f%7e?x=1&y=%7E&z"  # S3 keys may hold any of these
    line = (await servers.sent(client, servers.to_recorder(target))).split(b"\r\n", 1)[0]
    return "yes" if line == b"GET " + target + b" HTTP/1.1" else f"NO: sent {line!r}"


async def non_ascii(client: Candidate, servers: Servers) -> str:
    target = "/b/caf\udce9".encode("utf-8", "surrogateescape")  # b"/b/caf\xe9": mitmproxy's surrogate-escaped byte
    try:
        head = await servers.sent(client, servers.to_recorder(target))
    except Exception as e:
        return f"refused ({type(e).__name__})"
    line = head.split(b"\r\n", 1)[0]
    return "sent as is" if line == b"GET " + target + b" HTTP/1.1" else f"ALTERED: sent {line!r}"


async def header_order(client: Candidate, servers: Servers) -> str:
    mine = [(b"X-Dup", b"1"), (b"x-amz-date", b"2"), (b"X-Dup", b"3"), (b"authorization", b"A")]
    lines = _head_lines(await servers.sent(client, servers.to_recorder(b"/h", *mine)))
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


async def cookies(client: Candidate, servers: Servers) -> str:
    await servers.sent(client, servers.to_recorder(b"/cookie"))
    head = await servers.sent(client, servers.to_recorder(b"/after"))
    return "no cookie kept" if b"cookie:" not in head.lower() else "NO: a cookie was sent back"


async def read_timeout(client: Candidate, servers: Servers) -> str:
    started = time.monotonic()
    try:
        await client.whole(servers.to_recorder(b"/hang", read_timeout=0.3), 100)
    except Exception as e:
        return f"yes ({type(e).__name__} after {time.monotonic() - started:.1f} s)"
    return "no: answered"


async def connect_timeout(client: Candidate, servers: Servers) -> str:
    # a listener whose accept queue is full: the kernel drops the SYN, the connect hangs (loopback only)
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        started = time.monotonic()
        try:
            await asyncio.wait_for(client.whole(servers.to_recorder(b"/", port=port, connect_timeout=0.3), 100), 5)
        except TimeoutError as e:
            if time.monotonic() - started >= 4.5:
                return "NO: still connecting after 5 s"
            return f"yes ({type(e).__name__} after {time.monotonic() - started:.1f} s)"
        except Exception as e:
            return f"yes ({type(e).__name__} after {time.monotonic() - started:.1f} s)"
        return "no: connected"


async def tls(client: Candidate, servers: Servers) -> str:
    verdicts = []
    try:
        await client.whole(servers.to_nginx(b"/small/k", verify=True), 2000)
        verdicts.append("on: ACCEPTED an unknown CA")
    except Exception as e:
        verdicts.append(f"on: refused ({type(e).__name__})")
    status, _, _ = await client.whole(servers.to_nginx(b"/small/k", verify=False), 2000)
    verdicts.append(f"off: {status}")
    status, _, _ = await client.whole(servers.to_nginx(b"/small/k", verify=servers.ca), 2000)
    verdicts.append(f"custom CA: {status}")
    return "; ".join(verdicts)


async def upstream_proxy(client: Candidate, servers: Servers) -> str:
    proxy_url = f"http://127.0.0.1:{servers.proxy.port}"
    before = len(servers.proxy.heads)
    _, _, body = await client.whole(servers.to_nginx(b"/small/k?a=1", "http", proxy=proxy_url), 2000)
    status, _, tunneled = await client.whole(servers.to_nginx(b"/small/k", proxy=proxy_url, verify=servers.ca), 2000)
    lines = [line.decode() for line in servers.proxy.heads[before:]]
    absolute = lines[0] == f"GET http://127.0.0.1:{servers.http_port}/small/k?a=1 HTTP/1.1" and body == b"proxied"
    connect = len(lines) > 1 and lines[1].startswith(f"CONNECT 127.0.0.1:{servers.https_port} ") and len(tunneled) == KiB
    return f"http absolute-form: {'yes' if absolute else 'NO ' + repr(lines)}; https CONNECT: {'yes' if connect else 'NO'}"


async def pinned(client: Candidate, servers: Servers) -> str:
    # a context of its own, so that no connection of an earlier check (same address, no SNI) is reused
    context = ssl.create_default_context(cadata=servers.ca.get_ca_certs(binary_form=True)[0])
    seen = []
    for name in ("origin.test", "other.test"):  # one address, two names: a connection each?
        host = f"{name}:{servers.https_port}".encode()
        ask = replace(servers.to_nginx(b"/sni", verify=context, sni=name), headers=((b"Host", host),))
        _, _, body = await client.whole(ask, 200)
        seen.append(body.decode())
    if seen == ["origin.test|origin.test", "other.test|other.test"]:
        return "yes (and the TLS name is part of the pool key)"
    if seen[0] == "origin.test|origin.test":
        return f"yes on a new connection; but a kept-alive one is REUSED for another TLS name (nginx saw {seen[1]!r})"
    return f"NO: nginx saw {seen}"


async def streaming(client: Candidate, servers: Servers) -> str:
    sizes: list[int] = []
    status = await client.stream(servers.to_nginx(b"/large/k", "http"), lambda chunk: sizes.append(len(chunk)))
    if status != 200 or sum(sizes) != 8 * MiB:
        return f"no: {status}, {sum(sizes)} bytes"
    return f"yes ({len(sizes)} chunks, up to {max(sizes) // KiB} KiB)"


async def no_gunzip(client: Candidate, servers: Servers) -> str:
    _, _, body = await client.whole(servers.to_nginx(b"/gz/k", "http"), 1 << 20)
    return "yes (raw gzip bytes)" if body == servers.gz_body else f"NO: {len(body)} bytes, not the {len(servers.gz_body)} sent"


async def head_then_get(client: Candidate, servers: Servers) -> str:
    status, _, body = await client.whole(replace(servers.to_nginx(b"/small/k", "http"), method="HEAD"), 2000)
    again, _, second = await client.whole(servers.to_nginx(b"/small/k", "http"), 2000)
    return "yes" if (status, body, again, len(second)) == (200, b"", 200, KiB) else f"no: {status} {len(body)} {again}"


CHECKS: dict[str, Check] = {
    "raw path sent unchanged ('/b//a/./c/../d%2Fe%20f%7e?x=1&y=%7E&z')": raw_path,
    "path with a surrogate-escaped byte (b'\\xe9')": non_ascii,
    "header order, duplicates, case": header_order,
    "no cookie jar (Set-Cookie, then another request)": cookies,
    "per-request read timeout (0.3 s, server silent)": read_timeout,
    "per-request connect timeout (0.3 s, SYN dropped)": connect_timeout,
    "TLS verify on (unknown CA) / off / custom CA": tls,
    "HTTP upstream proxy": upstream_proxy,
    "pinned IP + other Host + SNI (nginx echoes $ssl_server_name|$host)": pinned,
    "body streamed in chunks (8 MiB)": streaming,
    "gzip not decompressed (Content-Encoding: gzip)": no_gunzip,
    "HEAD, then GET on the kept-alive connection": head_then_get,
}

PACING = {  # the supported place for backfill's --max-rps / --max-bandwidth (tools/backfill.PacedTransport now)
    HttpxTransport.name: "a transport wrapper (httpx.AsyncBaseTransport), as backfill.PacedTransport was",
    HttpcorePool.name: "a wrapper of the pool (httpcore.AsyncConnectionInterface); or in OriginClient",
    Aiohttp.name: "ClientSession(middlewares=...) (awaited per request) or TraceConfig; bytes: in the read loop",
    H11Pool.name: "none needed: the client is ours; pace in OriginClient._send/_read (a Pacer argument)",
}


async def checklist(client: Candidate, servers: Servers) -> dict[str, str]:
    """Every check's verdict for `client` (a check that raises says what failed)."""
    verdicts = {}
    for name, check in CHECKS.items():
        try:
            verdicts[name] = await check(client, servers)
        except Exception as e:  # the checklist reports what failed
            verdicts[name] = f"no: {type(e).__name__}: {str(e)[:80]}"
    return verdicts
