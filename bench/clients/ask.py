"""One request as the addon would describe it to any HTTP client (`Ask`), and what each candidate
client offers for it (`Candidate`): the whole answer up to a limit, or the body streamed chunk by
chunk; `Reading` makes both from a candidate's way of opening an answer."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol


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


def timeouts(ask: Ask) -> dict[str, float]:
    return {"connect": ask.connect_timeout, "read": ask.read_timeout, "write": ask.read_timeout, "pool": ask.connect_timeout}


def insecure() -> ssl.SSLContext:
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
