"""What is measured: the candidates (and the floor, bare asyncio streams, for reference), the
workloads, and one repetition of a workload by a client, timed by this process's CPU."""

from __future__ import annotations

import asyncio
import gc
import re
import resource
import ssl
import time
from dataclasses import dataclass

from bench.clients.ask import Ask, Candidate, Headers, Sink
from bench.clients.h11pool import H11Pool
from bench.clients.libraries import Aiohttp, HttpcorePool, HttpxTransport
from bench.clients.servers import NOT_FOUND_XML
from bench.report import log

KiB, MiB = 1 << 10, 1 << 20
ERROR_BODY_LIMIT = 1024  # as backorigin.limits.STORE_ERROR_BODY_LIMIT: enough of an error body


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
