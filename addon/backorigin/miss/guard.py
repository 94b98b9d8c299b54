"""What stands between the misses and an origin at cut-over, when every miss goes to an old site
that may be the weakest machine in the story, and what keeps one tenant from spoiling it for another
(a tenant: a bucket's signed clients, or its anonymous ones):

- `NotFound`: an origin's 404 is remembered for a while (cachetools' TTLCache, bounded) for the
  exact request the origin was asked (its URL, the query when the rule passes it, and the headers),
  so a key the origin lacks costs it one request per TTL, and no client's odd query or header can
  make others get a 404; indexed by bucket and key, so a write forgets a key's 404s at once;
- `Slots`: at most N fetches at once per origin host, handed out fairly between the tenants that
  wait (the tenant running the fewest gets the next free slot); further misses wait in a bounded
  queue, where a tenant may take no more than its share while others wait; past it a miss is
  refused (the client gets 503 SlowDown, which S3 clients retry);
- `Breaker`: per origin host and tenant, after N failures in a row (network errors, timeouts, 5xx)
  within a window, misses fail at once (424, or the rule's secondary origin) for a cool-down; then
  one fetch is let through to test it (half-open): its success closes the circuit, its failure
  opens it again.

Pure cores with a clock of their own (`now`), tested alone; `OriginGuard` puts them together for
`Mirror`, and counts what they did for the metrics. Its tables of hosts and circuits are bounded
(KEPT): with a pattern entry ("*") they grow with the buckets and, with ${bucket} in a host, the
hosts clients name, so the least recently used entries that are as new go (a circuit closed with no
recent failure, a host with nothing running or waiting), and with them their metrics' labels.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from cachetools import TTLCache

from backorigin.miss.origin import Failure, OriginResult
from backorigin.options import count, seconds
from backorigin.rules.targets import OriginRequest

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Tenant = tuple[str, bool]  # (bucket, signed): whose misses share a fair part of an origin's slots and a circuit
NOT_FOUND_KEPT = 100_000  # origin 404s remembered at most (the oldest go first)
VARIANTS_KEPT = 64  # 404s remembered for one key (other queries or headers): no key's forgetting costs more
KEPT = 10_000  # origin hosts, and circuits, kept past their use while they are as new (OriginGuard)


def origin_host(url: str) -> str:
    """host[:port] of an origin URL: what the limits and circuits are kept per."""
    return urlsplit(url).netloc.lower()


def asked(request: OriginRequest) -> bytes:
    """What the origin was asked, as a short digest: the URL (with the query a rule passes), the
    secondary origin's, and the headers (the ones a rule passes from the client among them)."""
    text = repr((request.url, request.fallback_url, request.headers))
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class _Kept(TTLCache[Hashable, Any]):
    """A TTLCache that tells `gone(key)` of every entry it lets go (expired, evicted, deleted)."""

    def __init__(self, size: int, ttl: float, timer: Clock, gone: Callable[[Any], None]) -> None:
        super().__init__(size, ttl, timer=timer)
        self.gone = gone

    def expire(self, time: float | None = None) -> Any:
        expired = super().expire(time)
        for key, _ in expired:
            self.gone(key)
        return expired

    def __delitem__(self, key: Hashable) -> None:
        super().__delitem__(key)
        self.gone(key)


class NotFound:
    """Origin 404s per (bucket, key, what the origin was asked), each remembered `ttl` seconds; 0
    remembers none. Adding, asking and forgetting a key cost O(1), whatever is remembered."""

    def __init__(self, ttl: float, size: int = NOT_FOUND_KEPT, now: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self._seen: _Kept | None = _Kept(size, ttl, now, self._gone) if ttl > 0 else None
        self._by_key: dict[tuple[str, str], set[bytes]] = {}  # (bucket, key) -> what was asked

    def add(self, bucket: str, key: str, request: OriginRequest) -> None:
        """Remember a 404 (not when the key has VARIANTS_KEPT already: that variant asks each time)."""
        if self._seen is not None:
            fingerprint = asked(request)
            kept = self._by_key.setdefault((bucket, key), set())
            if len(kept) < VARIANTS_KEPT or fingerprint in kept:
                self._seen[(bucket, key, fingerprint)] = True
                kept.add(fingerprint)

    def holds(self, bucket: str, key: str, request: OriginRequest) -> bool:
        """Whether the origin said 404 to this very request for the key, within the TTL."""
        return self._seen is not None and (bucket, key) in self._by_key and (bucket, key, asked(request)) in self._seen

    def forget(self, bucket: str, key: str) -> None:
        """A write or a delete of the key through the proxy: every 404 remembered for it goes."""
        if self._seen is not None:
            for fingerprint in list(self._by_key.get((bucket, key), ())):
                self._seen.pop((bucket, key, fingerprint), None)

    def _gone(self, entry: tuple[str, str, bytes]) -> None:
        bucket, key, fingerprint = entry
        kept = self._by_key.get((bucket, key))
        if kept is not None:
            kept.discard(fingerprint)
            if not kept:
                del self._by_key[(bucket, key)]

    def __len__(self) -> int:
        return len(self._seen) if self._seen is not None else 0


class Full(Exception):
    """The origin host's fetches and its queue are all taken (or this tenant has its share of them)."""


class Slots:
    """At most `limit` fetches at once to one origin host, at most `queue` more waiting. A freed
    slot goes to the waiting tenant that runs the fewest fetches (the longest waiting of its
    misses first); when the queue is full, a tenant below its share of it takes the place of the
    newest waiter of the tenant that has the most (which gets Full). Every step is O(tenants)."""

    def __init__(self, limit: int, queue: int) -> None:
        self.limit, self.queue = limit, queue
        self.running = 0
        self.waiting = 0
        self._running: Counter[Tenant] = Counter()
        self._queues: dict[Tenant, deque[asyncio.Future[None]]] = {}

    def slot(self, tenant: Tenant) -> _Slot:
        return _Slot(self, tenant)

    async def acquire(self, tenant: Tenant) -> None:
        if self.running < self.limit:
            self._take(tenant)
            return
        if self.waiting >= self.queue:
            self._push_out(tenant)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, deque()).append(waiter)
        self.waiting += 1
        try:
            await waiter  # the slot is taken for it by release(), or it is pushed out (Full)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(tenant)  # granted as it was cancelled
            else:
                self._unqueue(tenant, waiter)
            raise

    def release(self, tenant: Tenant) -> None:
        self.running -= 1
        self._running[tenant] -= 1
        if self._running[tenant] <= 0:
            del self._running[tenant]
        while self._queues and self.running < self.limit:
            chosen = min(self._queues, key=lambda t: self._running[t])  # dicts keep order: the first on a tie
            waiter = self._queues[chosen].popleft()
            self._tidy(chosen)
            self.waiting -= 1
            if not waiter.done():  # not cancelled meanwhile
                self._take(chosen)
                waiter.set_result(None)

    def running_for(self, tenant: Tenant) -> int:
        return self._running[tenant]

    def waiting_for(self, tenant: Tenant) -> int:
        return len(self._queues.get(tenant, ()))

    def _take(self, tenant: Tenant) -> None:
        self.running += 1
        self._running[tenant] += 1

    def _push_out(self, tenant: Tenant) -> None:
        """The queue is full: `tenant` waits only in place of a tenant that holds more of it."""
        mine = len(self._queues.get(tenant, ()))
        most = max(self._queues, key=lambda t: len(self._queues[t]), default=None)
        if most is None or most == tenant or len(self._queues[most]) <= mine + 1:
            raise Full(f"{self.limit} fetches running and {self.waiting} waiting")
        newest = self._queues[most].pop()
        self._tidy(most)
        self.waiting -= 1
        newest.set_exception(Full(f"{self.limit} fetches running and {self.waiting} waiting; another tenant needs its share"))

    def _unqueue(self, tenant: Tenant, waiter: asyncio.Future[None]) -> None:
        queue = self._queues.get(tenant)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.waiting -= 1
            self._tidy(tenant)

    def _tidy(self, tenant: Tenant) -> None:
        if not self._queues.get(tenant):
            self._queues.pop(tenant, None)


class _Slot:
    def __init__(self, slots: Slots, tenant: Tenant) -> None:
        self.slots, self.tenant = slots, tenant

    async def __aenter__(self) -> None:
        await self.slots.acquire(self.tenant)

    async def __aexit__(self, *exc: object) -> None:
        self.slots.release(self.tenant)


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

    def as_new(self) -> bool:
        """Closed, with no failure that still counts: a new breaker would behave the same."""
        return self.state is Circuit.CLOSED and (self._count == 0 or self.now() - self._last_failure > self.window)

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


@dataclass(frozen=True)
class GuardSettings:
    """The guard's options (miss.originprotection declares and reads them)."""

    not_found_ttl: float = seconds(
        "backorigin_origin_404_ttl", 60.0,
        "Seconds an origin's 404 for a key is remembered (per rule): within it, misses of the key get the 404 "
        "without asking the origin. A write or delete of the key through the proxy forgets it. 0: off.", zero_is_off=True)
    concurrency: int = count(
        "backorigin_origin_concurrency", 64,
        "Most origin fetches at once per origin host; further misses wait (see backorigin_origin_queue).")
    queue: int = count(
        "backorigin_origin_queue", 1000,
        "Most misses waiting for an origin host's fetch; past it a miss gets 503 SlowDown, which S3 clients retry.")
    failures: int = count(
        "backorigin_breaker_failures", 5,
        "Failures in a row (network errors, timeouts, 5xx) that open an origin host's circuit: its misses then "
        "fail at once (424, or the rule's MirrorURLSlave) for backorigin_breaker_cooldown. 0: never.",
        least=0, zero_means="never")
    window: float = seconds(
        "backorigin_breaker_window", 30.0,
        "Seconds within which failures count as in a row (a failure after a longer quiet starts the count again).")
    cooldown: float = seconds(
        "backorigin_breaker_cooldown", 10.0,
        "Seconds an open circuit waits before one fetch tests the origin (its success closes the circuit).")


# failures that count towards opening an origin's circuit, besides its 5xx answers
BREAKING = frozenset({Failure.NETWORK, Failure.TIMEOUT, Failure.INTEGRITY})


@dataclass
class OriginGuard:
    """The three for every origin host (circuits per host and tenant), made as they are first
    needed, and what they did."""

    settings: GuardSettings = field(default_factory=GuardSettings)
    now: Clock = time.monotonic
    counts: Counter[str] = field(default_factory=Counter)  # not_found_hits, queued, refused, failed_fast
    not_found: NotFound = field(init=False)
    slots: OrderedDict[str, Slots] = field(default_factory=OrderedDict)  # the least recently used first
    breakers: OrderedDict[tuple[str, Tenant], Breaker] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.configure(self.settings)

    def configure(self, settings: GuardSettings) -> None:
        """New settings: limits and circuits start afresh; fetches under way keep their slots."""
        self.settings = settings
        self.not_found = NotFound(settings.not_found_ttl, now=self.now)
        self.slots.clear()
        self.breakers.clear()

    def slots_for(self, url: str) -> Slots:
        s = self.settings
        return _kept(self.slots, origin_host(url), lambda: Slots(s.concurrency, s.queue),
                     lambda slots: not slots.running and not slots.waiting)

    def breaker_for(self, url: str, tenant: Tenant) -> Breaker:
        """The circuit of `url`'s host for `tenant`: one tenant's failing keys open no other's."""
        host, s = origin_host(url), self.settings
        bucket, signed = tenant
        return _kept(self.breakers, (host, tenant),
                     lambda: Breaker(f"{host} (bucket {bucket}, {'signed' if signed else 'anonymous'} clients)", s.failures,
                                     s.window, s.cooldown, self.now),
                     Breaker.as_new)

    def observe(self, request: OriginRequest, url: str, result: OriginResult) -> None:
        """Every answer (or failure) of an origin, the secondary's too, goes to its host's circuit for
        the tenant (miss.origin's OriginClient tells the guard of each)."""
        self.breaker_for(url, request.tenant).record(result.failure in BREAKING or (result.status or 0) >= 500)


def _kept(table: OrderedDict[Any, Any], name: Hashable, make: Callable[[], Any], as_new: Callable[[Any], bool]) -> Any:
    """`table[name]`, made when missing, now the most recently used. Past KEPT entries, the least
    recently used goes if it is `as_new` (else it counts as used): a few steps per new entry, so
    that entries as new never pile up behind one in use, and no request pays for many."""
    found = table.get(name)
    if found is None:
        found = table[name] = make()
        for _ in range(3):
            if len(table) <= KEPT:
                break
            oldest, entry = next(iter(table.items()))
            if as_new(entry):
                del table[oldest]
            else:
                table.move_to_end(oldest)
    table.move_to_end(name)
    return found
