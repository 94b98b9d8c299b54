"""Whole-body GETs of large objects by several clients at once, each body hashed with sha256 (or
only counted) and dropped as it arrives: what a client got, and when."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass

from bench.load.client import Connection


@dataclass(frozen=True)
class Download:
    """One client's GET, its body hashed and dropped as it arrived."""

    status: int | None  # None: no complete answer (see failure)
    size: int  # body bytes received
    sha256: str
    headers_s: float  # request sent -> response head
    first_byte_s: float  # request sent -> first body byte
    total_s: float  # request sent -> last body byte
    failure: str = ""

    def wrong(self, size: int, sha256: str) -> str:
        """What is wrong with it ("" when nothing is): a failure, a status other than 200, another
        size, or (when it was hashed) another sha256."""
        if self.failure:
            return self.failure
        if self.status != 200 or self.size != size or (self.sha256 and self.sha256 != sha256):
            return f"status {self.status}, {self.size} bytes" + (f", sha256 {self.sha256[:12]}…" if self.sha256 else "")
        return ""


async def download(connection: Connection, path: str, within: float, hash_body: bool = True) -> Download:
    """One GET of `path`, the body dropped as it arrives; hashed with sha256 on the way unless
    hash_body is false (then `sha256` is empty)."""
    digest = hashlib.sha256() if hash_body else None
    received = 0

    def sink(chunk: bytes) -> None:
        nonlocal received
        if digest is not None:
            digest.update(chunk)
        received += len(chunk)

    started = time.monotonic()
    try:
        answer = await connection.request("GET", path, timeout=within, sink=sink)
    except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as e:
        # a reset, a timeout, a short body, a garbled head: reported, never raised
        took = time.monotonic() - started
        sha256 = digest.hexdigest() if digest is not None else ""
        return Download(None, received, sha256, math.nan, math.nan, took, f"{type(e).__name__}: {e}")
    sha256 = digest.hexdigest() if digest is not None else ""
    return Download(answer.status, answer.size, sha256, answer.headers_s, answer.first_byte_s, answer.seconds)


async def open_connections(port: int, count: int) -> list[Connection]:
    """`count` connections to `port`, all open before any request goes (bounded: 30 s)."""
    async with asyncio.timeout(30):
        return list(await asyncio.gather(*(Connection(port).open() for _ in range(count))))


async def readers(port: int, path: str, clients: int, hashing: int, within: float) -> list[Download]:
    """`clients` connections opened first, then one GET each of `path` at once; the first
    `hashing` of them also hash the body."""
    connections = await open_connections(port, clients)
    try:
        return list(await asyncio.gather(*(download(c, path, within, hash_body=i < hashing)
                                           for i, c in enumerate(connections))))
    finally:
        for connection in connections:
            connection.close()
