"""What stands between the misses and an origin at cut-over, when every miss goes to an old site
that may be the weakest machine in the story:

- `NotFound`: an origin's 404 is remembered per rule and key for a while (cachetools' TTLCache,
  bounded), so a key the origin lacks costs it one request per TTL, not one per client request;
- `Slots`: at most N fetches at once per origin host; further misses wait in a bounded queue, and
  past it they are refused (the client gets 503 SlowDown, which S3 clients retry);
- `Breaker`: per origin host, after N failures in a row (network errors, timeouts, 5xx) within a
  window, misses fail at once (424, or the rule's secondary origin) for a cool-down; then one fetch
  is let through to test it (half-open): its success closes the circuit, its failure opens it again.

Pure cores with a clock of their own (`now`), tested alone; `OriginGuard` puts them together for
`Mirror`, and counts what they did for the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from cachetools import TTLCache

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
NOT_FOUND_KEPT = 100_000  # origin 404s remembered at most (the oldest go first)


def origin_host(url: str) -> str:
    """host[:port] of an origin URL: what the limits and circuits are kept per."""
    return urlsplit(url).netloc.lower()


class NotFound:
    """Origin 404s per (bucket, rule, key), each remembered `ttl` seconds; 0 remembers none."""

    def __init__(self, ttl: float, size: int = NOT_FOUND_KEPT, now: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self._seen: TTLCache[tuple[str, int, str], bool] | None = TTLCache(size, ttl, timer=now) if ttl > 0 else None

    def add(self, bucket: str, rule: int, key: str) -> None:
        if self._seen is not None:
            self._seen[(bucket, rule, key)] = True

    def __contains__(self, entry: tuple[str, int, str]) -> bool:
        return self._seen is not None and entry in self._seen

    def forget(self, bucket: str, key: str) -> None:
        """A write or a delete of the key through the proxy: every rule's entry for it goes."""
        if self._seen is not None:
            for entry in [e for e in self._seen if e[0] == bucket and e[2] == key]:
                self._seen.pop(entry, None)

    def __len__(self) -> int:
        return len(self._seen) if self._seen is not None else 0


class Full(Exception):
    """The origin host's fetches and its queue are all taken."""


class Slots:
    """At most `limit` fetches at once to one origin host, at most `queue` more waiting."""

    def __init__(self, limit: int, queue: int) -> None:
        self.limit, self.queue = limit, queue
        self._free = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0

    async def __aenter__(self) -> None:
        if self._free.locked():
            if self.waiting >= self.queue:
                raise Full(f"{self.limit} fetches running and {self.waiting} waiting")
            self.waiting += 1
            try:
                await self._free.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._free.acquire()
        self.running += 1

    async def __aexit__(self, *exc: object) -> None:
        self.running -= 1
        self._free.release()


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class Breaker:
    """One origin host's circuit. `allow()` before a fetch, `record(failed)` after it."""

    host: str
    failures: int  # in a row, to open; 0: never opens
    window: float  # seconds: a failure older than this before the next one starts the count again
    cooldown: float  # seconds open before one fetch may test the origin
    now: Clock = time.monotonic
    state: Circuit = Circuit.CLOSED
    _count: int = 0
    _last_failure: float = 0.0
    _opened_at: float = 0.0
    _testing: bool = False  # half-open: the one test fetch is under way

    def allow(self) -> bool:
        if self.state is Circuit.CLOSED:
            return True
        if self.state is Circuit.OPEN:
            if self.now() - self._opened_at < self.cooldown:
                return False
            self._move(Circuit.HALF_OPEN, f"{self.cooldown:g}s passed: one fetch tests it")
        if self._testing:
            return False
        self._testing = True
        return True

    def record(self, failed: bool) -> None:
        now = self.now()
        if self.state is Circuit.HALF_OPEN and self._testing:
            self._testing = False
            if failed:
                self._open(now, "the test fetch failed")
            else:
                self._count = 0
                self._move(Circuit.CLOSED, "the test fetch succeeded")
            return
        if not failed:
            self._count = 0
            return
        if self.failures <= 0:
            return
        self._count = self._count + 1 if now - self._last_failure <= self.window else 1
        self._last_failure = now
        if self.state is Circuit.CLOSED and self._count >= self.failures:
            self._open(now, f"{self._count} failures in a row")

    def release(self) -> None:
        """After a fetch: a test fetch that recorded nothing (it raised, or was cancelled) failed."""
        if self._testing:
            self.record(failed=True)

    def _open(self, now: float, why: str) -> None:
        self._opened_at = now
        self._move(Circuit.OPEN, f"{why}; misses fail at once for {self.cooldown:g}s")

    def _move(self, state: Circuit, why: str) -> None:
        logger.warning("origin %s: circuit %s -> %s (%s)", self.host, self.state, state, why)
        self.state = state


@dataclass
class GuardSettings:
    not_found_ttl: float = 60.0
    concurrency: int = 64
    queue: int = 1000
    failures: int = 5
    window: float = 30.0
    cooldown: float = 10.0


@dataclass
class OriginGuard:
    """The three for every origin host, made as hosts are first seen, and what they did."""

    settings: GuardSettings = field(default_factory=GuardSettings)
    now: Clock = time.monotonic
    counts: Counter[str] = field(default_factory=Counter)  # not_found_hits, queued, refused, failed_fast
    not_found: NotFound = field(init=False)
    slots: dict[str, Slots] = field(default_factory=dict)
    breakers: dict[str, Breaker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.configure(self.settings)

    def configure(self, settings: GuardSettings) -> None:
        """New settings: limits and circuits start afresh; fetches under way keep their slots."""
        self.settings = settings
        self.not_found = NotFound(settings.not_found_ttl, now=self.now)
        self.slots.clear()
        self.breakers.clear()

    def slots_for(self, url: str) -> Slots:
        host = origin_host(url)
        if host not in self.slots:
            self.slots[host] = Slots(self.settings.concurrency, self.settings.queue)
        return self.slots[host]

    def breaker_for(self, url: str) -> Breaker:
        host = origin_host(url)
        if host not in self.breakers:
            s = self.settings
            self.breakers[host] = Breaker(host, s.failures, s.window, s.cooldown, self.now)
        return self.breakers[host]
