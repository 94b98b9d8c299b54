"""One origin fetch per fleet: proxies in front of one store take turns at a new object through a
lease, a small object in the store written create-only (miss.leasestore).

The proxy that writes the lease fetches the object (its fill, miss.mirror) and renews the lease
every third of its time to live until the write-back has landed. Then it leaves it to run out: the
object in the store is what the other proxies wait for, so nothing more is asked of the store. A
miss of the same key by this proxy later takes its lease back with `If-Match` on the version it
left (one request, as a new lease). A fill that stores nothing (an origin 404, a failure, a delete
meanwhile) removes its lease, so a waiting proxy takes its turn at once; so does every lease that
cannot be left: in the object's own bucket (its clients would see it) or in a versioned bucket
(each version would stay).

Another proxy that misses the object meanwhile finds the lease (412), looks at it (a HEAD) and
then, while it is renewed, at the object with a growing pause (50 ms, doubling, at most 1 s):
 - the object is in the store: the store answers its clients;
 - the lease is gone (its holder stored nothing): it writes the lease itself;
 - the lease has run out (its holder was killed, or its fill ended long ago and the key was
   deleted since): it takes it over (`If-Match` on the version seen: of several proxies, one
   wins) and fetches the object itself;
 - `wait` seconds have passed: it fetches the object itself in any case.

A miss no other proxy fills costs one store request more than without leases (the lease's write,
before the origin GET), plus a renewal for each third of the time to live its fill and write-back
take. A store that refuses a lease, or takes longer than TIMEOUT to answer (an error, no
permission, a store that hangs), costs that attempt: then misses whose leases live there go on
without one, as without leases, for TROUBLE_PAUSE seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import botocore.exceptions

from backorigin.miss.leasestore import Lease, LeaseSettings, LeaseStore, Seen
from backorigin.s3.addressing import ObjectKey
from backorigin.s3.clients import describe_error

logger = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_PAUSE = 0.05  # seconds before a waiting proxy first looks at the object and the lease again
LONGEST_PAUSE = 1.0
NEAR_THE_END = 0.2  # the shortest pause while a lease is about to run out
TROUBLE_PAUSE = 30.0  # seconds a store (and lease bucket) that failed a lease request is left alone
CLIENT_POOL = 10  # connections a boto3 client pools (botocore's max_pool_connections)
LEFT_KEPT = 10_000  # leases left to run out that this proxy remembers, to take back in one request
LeaseName = tuple[str, str, str]  # (endpoint, lease bucket, lease key)


class Watch:
    """The version of a lease a waiting proxy has seen, and since when."""

    def __init__(self) -> None:
        self.etag = self.owner = ""
        self.since = time.monotonic()

    def see(self, seen: Seen) -> bool:
        """Note the version seen (a renewal starts the watch again); True for a holder not seen
        before (the first look, or a proxy that took the lease over)."""
        if seen.etag != self.etag:
            self.etag, self.since = seen.etag, time.monotonic()
        new_holder, self.owner = seen.owner != self.owner, seen.owner
        return new_holder

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.since


@dataclass(frozen=True)
class Turn:
    """What a miss does: fetch the object under `lease` (None: without one), or let the store
    answer (`stored`: another proxy's fill has landed)."""

    lease: Lease | None = None
    stored: bool = False


def owner_name(listen: str) -> str:
    """Which proxy holds a lease, for people reading it: host, listen address, pid."""
    return f"{socket.gethostname()} {listen} pid {os.getpid()}"


class Leases:
    """This proxy's side of the fleet's leases: taking turns (`take`), renewing what it holds,
    letting go (`release`), and counting what happened (the metrics)."""

    def __init__(self, settings: LeaseSettings | None = None, store: LeaseStore | None = None) -> None:
        self.settings = settings or LeaseSettings(place=None)  # off until configured
        self.store = store or LeaseStore()
        # threads of their own (boto3 blocks): a burst of misses never takes every thread of the loop's
        # default executor, nor waits for them; as many as a boto3 client pools connections
        self._threads = ThreadPoolExecutor(CLIENT_POOL, thread_name_prefix="backorigin-leases")
        self.held: dict[LeaseName, Lease] = {}
        self.left: OrderedDict[LeaseName, Lease] = OrderedDict()  # left to run out, the most recent last (LEFT_KEPT)
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()
        self._renewer: asyncio.Task | None = None
        self._trouble: dict[tuple[str, str], float] = {}  # (endpoint, lease bucket) -> until when it is left alone

    def prefix_in(self, bucket: str) -> str | None:
        place = self.settings.place
        return place.prefix_in(bucket) if place is not None else None

    async def take(self, key: ObjectKey) -> Turn:
        """This proxy's turn at fetching the object, or the store's answer once another proxy's
        fill has landed (see the module's description)."""
        settings = self.settings
        if settings.place is None:
            return Turn()
        endpoint, bucket, name = key
        where = settings.place.of(bucket, name)
        if self._trouble.get((endpoint, where[0]), 0.0) > time.monotonic():
            self.counts["unavailable"] += 1
            return Turn()
        try:
            lease = await self._write(settings, key, where)
            if lease is not None:
                return self._holding(lease, "held")
            return await self._wait(settings, key, where)
        except Exception as e:  # whatever the store did, the miss goes on (without a lease)
            self._trouble[(endpoint, where[0])] = time.monotonic() + TROUBLE_PAUSE
            logger.warning("cannot use the lease s3://%s/%s: %s; misses of objects whose leases live there are "
                           "fetched without one for %gs (backorigin_leases)", where[0], where[1], describe_error(e),
                           TROUBLE_PAUSE)
            self.counts["unavailable"] += 1
            return Turn()

    async def _write(self, settings: LeaseSettings, key: ObjectKey, where: tuple[str, str]) -> Lease | None:
        """The lease, taken back when this proxy left it to run out and nobody took it over since
        (`If-Match` on the version left), else created; None when another proxy's lease is there."""
        left = self.left.pop((key[0], *where), None)
        if left is not None and (lease := await self._run(self.store.write, settings, key[0], where, key[1:],
                                                          IfMatch=left.etag)) is not None:
            return lease
        return await self._run(self.store.write, settings, key[0], where, key[1:], IfNoneMatch="*")

    async def _wait(self, settings: LeaseSettings, key: ObjectKey, where: tuple[str, str]) -> Turn:
        """Look at the lease, and at the object while the lease is renewed, with a growing pause
        (and once more right when the lease would run out), until the object is stored, the lease
        is gone or has run out, or `wait` seconds have passed."""
        deadline = time.monotonic() + settings.wait
        pause = FIRST_PAUSE
        watch = Watch()
        while True:
            seen = await self._run(self.store.look, key[0], where, settings.ttl)
            turn = await (self._after_release(settings, key, where) if seen is None else
                          self._after_look(settings, key, where, seen, watch))
            if turn is not None:
                return turn
            if seen is not None and time.monotonic() > deadline:
                logger.warning("s3://%s/%s: waited %gs for %s to store it: fetching it here too", key[1], key[2],
                               settings.wait, seen.owner)
                self.counts["waited_too_long"] += 1
                return Turn()
            sleep = pause * random.uniform(0.5, 1.0)  # jitter: waiting proxies do not ask in step
            if seen is not None:
                sleep = min(sleep, max(seen.left(watch.seconds), NEAR_THE_END))
            await asyncio.sleep(sleep)
            pause = min(pause * 2, LONGEST_PAUSE)

    async def _after_release(self, settings: LeaseSettings, key: ObjectKey, where: tuple[str, str]) -> Turn | None:
        """The lease is gone: the object is stored, or its holder stored nothing and this proxy
        takes its turn; None when another proxy took it first."""
        if await self._stored(key):
            return Turn(stored=True)
        lease = await self._run(self.store.write, settings, key[0], where, key[1:], IfNoneMatch="*")
        return self._holding(lease, "held") if lease is not None else None

    async def _after_look(self, settings: LeaseSettings, key: ObjectKey, where: tuple[str, str], seen: Seen,
                          watch: Watch) -> Turn | None:
        """The lease is there: take it over when it has run out (one proxy wins); while it is
        renewed, the object once it is stored; None: wait on."""
        if watch.see(seen):
            logger.info("s3://%s/%s: %s is fetching it; waiting (up to %gs)", key[1], key[2], seen.owner, settings.wait)
        if not seen.ran_out(watch.seconds):
            return Turn(stored=True) if await self._stored(key) else None
        lease = await self._run(self.store.write, settings, key[0], where, key[1:], IfMatch=seen.etag)
        if lease is None:
            return None
        logger.info("s3://%s/%s: the lease of %s ran out (%gs without renewal: its fill ended, or its proxy was "
                    "killed): fetching it here", key[1], key[2], seen.owner, seen.ttl)
        if seen.version:  # the stale version of a versioned bucket's lease goes now, or removing ours would revive it
            await self._run(self.store.remove, replace(lease, etag=seen.etag), seen.version)
        return self._holding(lease, "taken_over")

    async def _stored(self, key: ObjectKey) -> bool:
        stored = await self._run(self.store.stored, key)
        if stored:
            self.counts["waited"] += 1
        return stored

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, partial(call, *args, **kwargs))

    def _holding(self, lease: Lease, outcome: str) -> Turn:
        self.counts[outcome] += 1
        self.held[lease.name] = lease
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_forever())
        return Turn(lease)

    def release(self, lease: Lease, stored: bool = False) -> None:
        """The fill is over. Its object is `stored`: the lease is left to run out when it may be
        (see the module's description), and remembered; else it is removed, in the background."""
        current = self.held.pop(lease.name, None)
        if current is None:
            return
        if stored and current.may_be_left:
            self.left[current.name] = current
            while len(self.left) > LEFT_KEPT:
                self.left.popitem(last=False)
        else:
            self._in_background(self.store.remove, current, current.version)

    async def _renew_forever(self) -> None:
        """Renew the leases written a third of their time to live ago (looked at twice as often),
        so a live holder's lease is never older than about half of it."""
        while self.held:
            third = self.settings.ttl / 3
            await asyncio.sleep(third / 2)
            for name, lease in list(self.held.items()):
                if time.monotonic() - lease.renewed >= third and self.held.get(name) is lease:
                    await self._renew(name, lease)

    async def _renew(self, name: LeaseName, lease: Lease) -> None:
        try:
            renewed = await self._run(self.store.write, self.settings, lease.endpoint, (lease.bucket, lease.key),
                                      lease.of, IfMatch=lease.etag)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            logger.warning("cannot renew the lease s3://%s/%s: %s", lease.bucket, lease.key, describe_error(e))
            return
        if renewed is None and self.held.get(name) is lease:
            logger.warning("the lease s3://%s/%s was taken over by another proxy (this one stalled past its time to "
                           "live): both fetch the object", lease.bucket, lease.key)
            self.counts["lost"] += 1
            del self.held[name]
            return
        if renewed is None:
            return
        if lease.version:
            # a versioned bucket keeps the renewed-away version: it goes before the renewal is the one held, or
            # removing the renewal would make it the lease again
            await self._run(self.store.remove, lease, lease.version)
        if self.held.get(name) is lease:
            self.held[name] = renewed
        elif self.left.get(name) is lease:  # left to run out meanwhile: the renewal is the version to take back
            self.left[name] = renewed
        else:  # removed meanwhile (its removal found the renewal instead): the renewal goes too
            self._in_background(self.store.remove, renewed, renewed.version)

    def _in_background(self, call: Callable[..., None], *args: Any) -> None:
        async def run() -> None:
            try:
                await self._run(call, *args)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
                logger.info("lease clean-up: %s", describe_error(e))

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, timeout: float) -> None:
        """Remove what is still held (a shutdown: the fills were cancelled), waiting up to `timeout`."""
        for lease in list(self.held.values()):
            self.release(lease)
        if self._renewer is not None:
            self._renewer.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        self._threads.shutdown(wait=False, cancel_futures=True)
