"""One origin fetch per fleet: proxies in front of one store take turns at a new object through a
lease, a small object in the store written create-only (`If-None-Match: *`).

The proxy that writes the lease fetches the object (its fill, miss.mirror) and keeps the lease
until the write-back has landed, renewing it every third of its time to live; then it removes it.
Another proxy that misses the object meanwhile finds the lease (412), and waits, looking at the lease
with a growing pause (50 ms, doubling, at most 1 s): once the lease is gone and the object is in
the store, the store answers its clients; when the lease's time has run out without a renewal (its
proxy was killed), it takes the lease over (`If-Match` on the stale lease: one proxy wins) and
fetches the object itself; after `wait` seconds it fetches it itself in any case. Time is the
store's: a lease has run out when the store's `Date` is more than its time to live past the lease's
`Last-Modified`, so the proxies' clocks do not matter.

A miss no other proxy fills costs one store request more than without leases (the lease's write);
the lease's removal comes after the write-back, off the client's path. A store that refuses a
lease, or takes longer than TIMEOUT to answer (an error, no permission, a store that hangs), costs
that attempt: then misses whose leases live there go on without one, as without leases, for
TROUBLE_PAUSE seconds. Where leases live: `LeasePlace`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, TypeVar

import botocore.exceptions

from backorigin.s3.addressing import ObjectKey
from backorigin.s3.clients import code_of, describe_error, make_s3_client, status_of, store_has

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PLACE = "s3://backorigin-leases/"  # backorigin_leases' default
IN_BUCKET_PREFIX = ".backorigin-lease-"  # backorigin_leases=bucket: a key at the root, no folder left behind
FIRST_PAUSE = 0.05  # seconds before a waiting proxy first looks at the lease again
LONGEST_PAUSE = 1.0
NEAR_THE_END = 0.2  # the shortest pause while a lease is about to run out
TIMEOUT = 5.0  # seconds a lease request may take: past it the miss goes on without a lease
TROUBLE_PAUSE = 30.0  # seconds a store (and lease bucket) that failed a lease request is left alone
LOST = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})  # someone else's turn
CLIENT_POOL = 10  # connections a boto3 client pools (botocore's max_pool_connections)
LEFT_FOR = 1  # days after which the lease bucket the proxy creates expires what a killed proxy left


@dataclass(frozen=True)
class LeasePlace:
    """Where the lease of an object lives: in a bucket of its own under `prefix` (the default,
    s3://backorigin-leases/, which a proxy creates when the store lacks it), or, with `bucket`
    None, in the object's own bucket, at its root, while the object is being fetched and stored.
    Named by a hash of the key (and bucket), so any key has a lease of fixed length."""

    bucket: str | None
    prefix: str = ""

    def of(self, bucket: str, key: str) -> tuple[str, str]:
        if self.bucket is None:
            return bucket, IN_BUCKET_PREFIX + _digest(key)
        return self.bucket, self.prefix + _digest(f"{bucket}/{key}")

    def prefix_in(self, bucket: str) -> str | None:
        """The prefix of `bucket`'s own keys that are leases (merged listings leave them out)."""
        return IN_BUCKET_PREFIX if self.bucket is None else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Lease:
    """A lease this proxy holds: where, and the version of it the store has (its ETag, its
    VersionId in a versioned bucket)."""

    endpoint: str
    bucket: str
    key: str
    of: tuple[str, str]  # the object's bucket and key
    etag: str
    version: str | None
    renewed: float  # time.monotonic() of the write


@dataclass(frozen=True)
class Seen:
    """Another proxy's lease, as a HEAD of it shows it."""

    etag: str
    version: str | None
    owner: str
    ttl: float
    age: float | None  # seconds since it was written, by the store's clock; None if the store sent no Date

    def left(self, watched: float) -> float:
        """Seconds until it runs out: by the store's clock, or else by how long this proxy has
        watched the same version of it (`watched` seconds)."""
        return self.ttl - (self.age if self.age is not None else watched)

    def ran_out(self, watched: float) -> bool:
        """Whether its holder stopped renewing it. HTTP dates have whole seconds: an age read from
        them is more than the time to live only once the lease is (up to a second past it)."""
        return self.left(watched) < 0


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


@dataclass(frozen=True)
class LeaseSettings:
    """backorigin_leases, backorigin_lease_ttl, backorigin_lease_wait (miss.fleetleases), and who this proxy is."""

    place: LeasePlace | None = None  # None: off, each proxy fetches on its own
    ttl: float = 30.0
    wait: float = 30.0
    owner: str = ""


@functools.cache
def lease_client(endpoint: str) -> Any:
    """The store's client for leases: the proxy's own credentials, short timeouts (a lease is small,
    and a store that cannot take one soon must not hold a miss up)."""
    return make_s3_client(endpoint, TIMEOUT)


def _version(answer: dict[str, Any]) -> str | None:
    version = answer.get("VersionId")
    return version if version and version != "null" else None


class LeaseStore:
    """The lease requests, blocking (boto3; callers run them in a thread), with the proxy's own
    credentials to the store the object belongs to."""

    def __init__(self, client: Callable[[str], Any] = lease_client) -> None:
        self._client = client
        self._ready: set[tuple[str, str]] = set()  # lease buckets known to exist, by endpoint

    def prepare(self, endpoint: str, place: LeasePlace) -> None:
        """The lease bucket, created (with a rule expiring what killed proxies leave) when the
        store lacks it; once per store and bucket."""
        if place.bucket is None or (endpoint, place.bucket) in self._ready:
            return
        client = self._client(endpoint)
        try:
            client.head_bucket(Bucket=place.bucket)
        except botocore.exceptions.ClientError as e:
            if status_of(e) != 404:
                raise
            try:
                client.create_bucket(Bucket=place.bucket)
                logger.info("created the bucket %s for the fleet's leases (backorigin_leases)", place.bucket)
            except botocore.exceptions.ClientError as created:
                if code_of(created) != "BucketAlreadyOwnedByYou":  # another proxy was first
                    raise
            rule = {"ID": "backorigin-leases", "Status": "Enabled", "Filter": {"Prefix": place.prefix},
                    "Expiration": {"Days": LEFT_FOR}}
            try:
                client.put_bucket_lifecycle_configuration(Bucket=place.bucket, LifecycleConfiguration={"Rules": [rule]})
            except botocore.exceptions.ClientError as e:
                logger.info("no lifecycle rule on %s (leases a killed proxy leaves stay): %s", place.bucket, describe_error(e))
        self._ready.add((endpoint, place.bucket))

    def write(self, settings: LeaseSettings, endpoint: str, where: tuple[str, str], of: tuple[str, str],
              **condition: str) -> Lease | None:
        """Write the lease of `of` (bucket, key) under `condition` (IfNoneMatch="*" to create,
        IfMatch=ETag to take over or renew); None when the condition fails (another proxy's turn)."""
        if settings.place is not None:
            self.prepare(endpoint, settings.place)
        owner = settings.owner.encode("ascii", "replace").decode()  # metadata is ASCII
        body = json.dumps({"owner": owner, "bucket": of[0], "key": of[1], "ttl": settings.ttl, "written": time.time()})
        try:
            answer = self._client(endpoint).put_object(
                Bucket=where[0], Key=where[1], Body=body.encode(), ContentType="application/json",
                Metadata={"backorigin-owner": owner, "backorigin-ttl": f"{settings.ttl:g}"}, **condition)
        except botocore.exceptions.ClientError as e:
            if code_of(e) in LOST or status_of(e) == 412:
                return None
            raise
        return Lease(endpoint, where[0], where[1], of, answer.get("ETag", ""), _version(answer), time.monotonic())

    def look(self, endpoint: str, where: tuple[str, str], ttl: float) -> Seen | None:
        try:
            head = self._client(endpoint).head_object(Bucket=where[0], Key=where[1])
        except botocore.exceptions.ClientError as e:
            if status_of(e) == 404:
                return None
            raise
        date, written = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date"), head.get("LastModified")
        try:
            age = (parsedate_to_datetime(date) - written).total_seconds() if date and written else None
        except (TypeError, ValueError):  # a Date that is no HTTP date: this proxy's own watching decides
            age = None
        metadata = head.get("Metadata", {})
        try:  # the holder's own time to live (proxies may be configured differently)
            ttl = float(metadata.get("backorigin-ttl", ttl))
        except ValueError:
            pass
        return Seen(head.get("ETag", ""), _version(head), metadata.get("backorigin-owner", "?"), ttl, age)

    def remove(self, lease: Lease, version: str | None = None) -> None:
        """Delete the lease if it is still this version: by VersionId in a versioned bucket (no
        delete marker is left), else with If-Match (a proxy that took it over keeps its own)."""
        client = self._client(lease.endpoint)
        condition = {"VersionId": version} if version else {"IfMatch": lease.etag}
        try:
            client.delete_object(Bucket=lease.bucket, Key=lease.key, **condition)
        except botocore.exceptions.ClientError as e:
            if code_of(e) not in LOST and status_of(e) not in (404, 412):
                raise

    def stored(self, key: ObjectKey) -> bool:
        endpoint, bucket, name = key
        return bool(store_has(self._client(endpoint), bucket, name))


def owner_name(listen: str) -> str:
    """Which proxy holds a lease, for people reading it: host, listen address, pid."""
    return f"{socket.gethostname()} {listen} pid {os.getpid()}"


class Leases:
    """This proxy's side of the fleet's leases: taking turns (`take`), renewing what it holds,
    letting go (`release`), and counting what happened (the metrics)."""

    def __init__(self, settings: LeaseSettings | None = None, store: LeaseStore | None = None) -> None:
        self.settings = settings or LeaseSettings()
        self.store = store or LeaseStore()
        # threads of their own (boto3 blocks): a burst of misses never takes every thread of the loop's
        # default executor, nor waits for them; as many as a boto3 client pools connections
        self._threads = ThreadPoolExecutor(CLIENT_POOL, thread_name_prefix="backorigin-leases")
        self.held: dict[tuple[str, str, str], Lease] = {}  # by (endpoint, lease bucket, lease key)
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
            lease = await self._run(self.store.write, settings, endpoint, where, (bucket, name), IfNoneMatch="*")
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

    async def _wait(self, settings: LeaseSettings, key: ObjectKey, where: tuple[str, str]) -> Turn:
        """Look at another proxy's lease, with a growing pause (and once more right when it would
        run out), until it is gone, has run out, or `wait` seconds have passed."""
        deadline = time.monotonic() + settings.wait
        pause = sleep = FIRST_PAUSE
        watch = Watch()
        while True:
            await asyncio.sleep(sleep)
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
            pause = min(pause * 2, LONGEST_PAUSE)
            sleep = pause * random.uniform(0.5, 1.0)  # jitter: waiting proxies do not ask in step
            if seen is not None:
                sleep = min(sleep, max(seen.left(watch.seconds), NEAR_THE_END))

    async def _after_release(self, settings: LeaseSettings, key: ObjectKey, where: tuple[str, str]) -> Turn | None:
        """The lease is gone: the object is stored, or its holder gave up (an origin 404, a failure)
        and this proxy takes its turn; None when another proxy took it first."""
        if await self._run(self.store.stored, key):
            self.counts["waited"] += 1
            return Turn(stored=True)
        lease = await self._run(self.store.write, settings, key[0], where, key[1:], IfNoneMatch="*")
        return self._holding(lease, "held") if lease is not None else None

    async def _after_look(self, settings: LeaseSettings, key: ObjectKey, where: tuple[str, str], seen: Seen,
                          watch: Watch) -> Turn | None:
        """The lease is there: take it over when it has run out (one proxy wins); None: wait on."""
        if watch.see(seen):
            logger.info("s3://%s/%s: %s is fetching it; waiting (up to %gs)", key[1], key[2], seen.owner, settings.wait)
        if not seen.ran_out(watch.seconds):
            return None
        lease = await self._run(self.store.write, settings, key[0], where, key[1:], IfMatch=seen.etag)
        if lease is None:
            return None
        logger.warning("s3://%s/%s: the lease of %s ran out (%gs without renewal): fetching it here", key[1], key[2],
                       seen.owner, seen.ttl)
        if seen.version:  # the stale version of a versioned bucket's lease goes now, or removing ours would revive it
            await self._run(self.store.remove, replace(lease, etag=seen.etag), seen.version)
        return self._holding(lease, "taken_over")

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, partial(call, *args, **kwargs))

    def _holding(self, lease: Lease, outcome: str) -> Turn:
        self.counts[outcome] += 1
        self.held[(lease.endpoint, lease.bucket, lease.key)] = lease
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_forever())
        return Turn(lease)

    def release(self, lease: Lease) -> None:
        """The fill is over (its write-back landed, or nothing will be stored): remove the lease,
        in the background."""
        current = self.held.pop((lease.endpoint, lease.bucket, lease.key), None)
        if current is not None:
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

    async def _renew(self, name: tuple[str, str, str], lease: Lease) -> None:
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
        if renewed is not None and lease.version:
            # a versioned bucket keeps the renewed-away version: it goes before the renewal is the one held, or
            # removing the renewal would make it the lease again
            await self._run(self.store.remove, lease, lease.version)
        if renewed is not None and self.held.get(name) is not lease:  # released meanwhile: the renewal goes too
            self._in_background(self.store.remove, renewed, renewed.version)
        elif renewed is not None:
            self.held[name] = renewed

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
