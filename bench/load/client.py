"""A small asyncio HTTP/1.1 client for the scenarios wrk cannot express: 100 simultaneous
GETs of one key, an open-loop rate with a store poller per response, a mixed request stream,
1 GiB downloads read, hashed and discarded as they arrive. Keep-alive, Content-Length and chunked
bodies; loopback only; every wait is bounded by a timeout."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    size: int  # body bytes received
    seconds: float  # request sent -> last body byte received
    done_at: float  # time.monotonic() of the last body byte
    headers_s: float = math.nan  # request sent -> response head received
    first_byte_s: float = math.nan  # request sent -> first body byte received (NaN: no body)


class Connection:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._sink: Callable[[bytes], object] | None = None
        self._first_byte_at = math.nan

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None

    async def request(self, method: str, path: str, timeout: float = 60.0,
                      sink: Callable[[bytes], object] | None = None) -> Answer:
        """One request; the body is counted and dropped chunk by chunk (each chunk also goes
        to `sink`, e.g. a hash's update, when given): never held whole."""
        if self.writer is None:
            await self.open()
        self._sink, self._first_byte_at = sink, math.nan
        try:
            async with asyncio.timeout(timeout):
                return await self._request(method, path)
        finally:
            self._sink = None

    def _got(self, chunk: bytes) -> int:
        if chunk and math.isnan(self._first_byte_at):  # the first body byte
            self._first_byte_at = time.monotonic()
        if self._sink is not None:
            self._sink(chunk)
        return len(chunk)

    async def _request(self, method: str, path: str) -> Answer:
        assert self.reader is not None and self.writer is not None
        start = time.monotonic()
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        headers_at = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        size = 0
        if method != "HEAD" and status not in (204, 304):
            if "chunked" in headers.get("transfer-encoding", "").lower():
                size = await self._chunked()
            elif "content-length" in headers:
                size = await self._exactly(int(headers["content-length"]))
            else:  # until close
                while chunk := await self.reader.read(READ_CHUNK):
                    size += self._got(chunk)
                self.close()
        done = time.monotonic()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, headers, size, done - start, done, headers_at - start, self._first_byte_at - start)

    async def _exactly(self, remaining: int) -> int:
        assert self.reader is not None
        total = 0
        while remaining:
            chunk = await self.reader.read(min(remaining, READ_CHUNK))
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            total += self._got(chunk)
            remaining -= len(chunk)
        return total

    async def _chunked(self) -> int:
        assert self.reader is not None
        total = 0
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return total
            total += await self._exactly(size)
            await self.reader.readexactly(2)


class Pool:
    """Up to `size` keep-alive connections to one port."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def request(self, method: str, path: str, timeout: float = 60.0) -> Answer:
        async with self._slots:
            connection = self._idle.pop() if self._idle else Connection(self.port)
            try:
                answer = await connection.request(method, path, timeout)
            except BaseException:
                connection.close()
                raise
            if connection.writer is not None:
                self._idle.append(connection)
            return answer

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


async def request_once(port: int, path: str, method: str = "GET", timeout: float = 120) -> Answer:
    """One request on a connection of its own."""
    connection = Connection(port)
    try:
        return await connection.request(method, path, timeout=timeout)
    finally:
        connection.close()
