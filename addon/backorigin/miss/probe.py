"""The store probe: the client's own GET or HEAD sent to the store before mitmproxy sends it.

A miss must be decided in the request hook for its answer to be streamed, and the store must
still be the one that authorises the client: so the proxy sends the client's request itself
(s3.storeclient.StoreClient: same method, target and headers, so a SigV4 signature stays valid) and
reads only the status line and headers, plus the small body of an error. A GET that carries no
Range of its own asks for one byte (`Range` is not among the signed headers then), so a probe of
a stored object costs next to nothing. Objects known to exist skip the probe (`ExistenceCache`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cachetools import TTLCache
from mitmproxy import http

from backorigin.limits import PROBE_ANSWER_LIMIT
from backorigin.s3.addressing import ObjectKey, ObjectRef
from backorigin.s3.clients import shared_s3_client, store_has
from backorigin.s3.storeclient import StoreAnswer, StoreClient

logger = logging.getLogger(__name__)

EXISTS_TTL = 600.0  # seconds a "the store has it" answer is trusted (a stale one is caught late, in the response hook)
EXISTS_CACHE_SIZE = 50_000


class ExistenceCache:
    """Objects the store recently said it has (cachetools' TTLCache: each kept `ttl` seconds, the
    least recently seen forgotten past `size`); misses are never cached (they are about to change)."""

    def __init__(self, ttl: float = EXISTS_TTL, size: int = EXISTS_CACHE_SIZE, now: Callable[[], float] = time.monotonic) -> None:
        self._seen: TTLCache[ObjectKey, bool] = TTLCache(size, ttl, timer=now)

    def __contains__(self, key: ObjectKey) -> bool:
        return key in self._seen

    def add(self, key: ObjectKey) -> None:
        self._seen[key] = True

    def discard(self, key: ObjectKey) -> None:
        self._seen.pop(key, None)


class StoreProbe:
    def __init__(self, verify: bool | str = True) -> None:
        self.client = StoreClient(verify)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def ask(self, request: http.Request, host: str, via: str | None = None) -> StoreAnswer | None:
        """The store's answer to the client's request (with the Host the store sees), complete when its body is at most
        PROBE_ANSWER_LIMIT; None (logged) when the store cannot be reached: mitmproxy then sends the
        request and reports what it gets."""
        return await self.client.ask(request, host, via, PROBE_ANSWER_LIMIT)

    @staticmethod
    async def denied_status(endpoint: str, ref: ObjectRef) -> int:
        """What a 403 AccessDenied stands for (backorigin_403_is_miss): 404 once a HEAD with the
        proxy's own credentials finds no object, else 403 (a store that cannot say keeps its 403)."""
        try:
            present = await asyncio.to_thread(store_has, shared_s3_client(endpoint), ref.bucket, ref.key)
        except Exception as e:
            logger.warning("cannot ask the store about s3://%s/%s: %s", ref.bucket, ref.key, e)
            return 403
        return 403 if present else 404


def answer_from_store(flow: http.HTTPFlow, answer: StoreAnswer) -> None:
    """The store's answer to the probe is the client's, when it was read whole; otherwise
    mitmproxy asks the store again and streams the answer."""
    if answer.complete:
        flow.response = answer.response()
