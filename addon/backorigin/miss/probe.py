"""Ask the store about an object with the client's own request, before mitmproxy sends it.

A miss must be decided in the request hook for its answer to be streamed, and the store must
still be the one that authorises the client: so the addon sends the client's request itself,
as mitmproxy would (same method, target and headers, so a SigV4 signature stays valid), and
reads only the status line and headers, plus the small body of a 404. A GET that carries no
Range of its own asks for one byte (`Range` is not among the signed headers then), so a
probe of a stored object costs next to nothing. Objects known to exist skip the probe.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import httpx
from mitmproxy import http

from backorigin.s3.replies import Reply

logger = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
_NOT_FORWARDED = frozenset({b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"expect"})
EXISTS_TTL = 600.0  # seconds a "the store has it" answer is trusted (a stale one is caught late, see BackOrigin.response)
EXISTS_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class StoreAnswer:
    """The store's answer to the probe (a 404's body included, to tell NoSuchKey apart)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @classmethod
    def of(cls, reply: Reply) -> StoreAnswer:
        return cls(reply.status, tuple(reply.headers), reply.body)


class ExistenceCache:
    """Objects the store recently said it has; misses are never cached (they are about to change)."""

    def __init__(self, ttl: float = EXISTS_TTL, size: int = EXISTS_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        seen = self._seen.get(key)
        return seen is not None and time.monotonic() - seen < self.ttl

    def add(self, key: tuple[str, str, str]) -> None:
        self._seen[key] = time.monotonic()
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def discard(self, key: tuple[str, str, str]) -> None:
        self._seen.pop(key, None)


class StoreProbe:
    """Pooled clients to the store: direct, or through mitmproxy's upstream proxy."""

    def __init__(self, verify: bool | str = True) -> None:
        self._verify = verify
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    def _client(self, via: str | None) -> httpx.AsyncClient:
        if via not in self._clients:
            self._clients[via] = httpx.AsyncClient(verify=self._verify, trust_env=False, follow_redirects=False,
                                                   timeout=httpx.Timeout(30.0, connect=5.0), proxy=via)
        return self._clients[via]

    async def ask(self, request: http.Request, via: str | None = None) -> StoreAnswer | None:
        """The store's answer to `request` as the client sent it (through the proxy `via`, in
        upstream mode); None (logged) when the store cannot be reached (mitmproxy then sends
        the request and reports what it gets)."""
        # no body goes with the probe, so nothing may announce one (a GET with a body is rare;
        # should a client have signed those headers, the store refuses the probe and mitmproxy asks)
        headers = [(k, v) for k, v in request.headers.fields if k.lower() not in _NOT_FORWARDED]
        if request.method == "GET" and "range" not in request.headers:
            headers.append((b"range", b"bytes=0-0"))
        url = httpx.URL(scheme=request.scheme, host=request.host, port=request.port,
                        raw_path=request.path.encode("utf-8", "surrogateescape"))
        try:
            async with self._client(via).stream(request.method, url, headers=headers) as answer:
                body = b""
                if answer.status_code == 404:
                    async for chunk in answer.aiter_raw():
                        body += chunk
                        if len(body) > MAX_ERROR_BODY:
                            break
                return StoreAnswer(answer.status_code, tuple(answer.headers.multi_items()), body)
        except httpx.HTTPError as e:
            logger.warning("cannot ask the store about %s: %s: %s", request.pretty_url, type(e).__name__, e)
            return None


def store_has(client: Any, bucket: str, key: str) -> bool:
    """HEAD the object with the proxy's own credentials (blocking: run it in a thread)."""
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise
