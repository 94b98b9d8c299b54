"""The fleet's leases as the store keeps them (miss.leases takes turns with them): where a lease
lives (`LeasePlace`), the lease a proxy holds (`Lease`) and one it sees (`Seen`), and the lease
requests (`LeaseStore`: blocking boto3 calls with the proxy's own credentials and short timeouts).

A lease is a small object written create-only (`If-None-Match: *`), renewed and taken over with
`If-Match` on the version seen; its metadata names its proxy and its time to live. Time is the
store's: a lease has run out when the store's `Date` is more than its time to live past the
lease's `Last-Modified`, so the proxies' clocks do not matter.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import botocore.exceptions
from mitmproxy import exceptions

from backorigin.options import seconds, text
from backorigin.s3.addressing import ObjectKey
from backorigin.s3.clients import code_of, describe_error, make_s3_client, status_of, store_has
from backorigin.tombstones.tombstones import StoreTombstones

logger = logging.getLogger(__name__)

DEFAULT_PLACE = "s3://backorigin-leases/"  # backorigin_leases' default
IN_BUCKET_PREFIX = ".backorigin-lease-"  # backorigin_leases=bucket: a key at the root, no folder left behind
TIMEOUT = 5.0  # seconds a lease request may take: past it the miss goes on without a lease
LOST = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})  # someone else's turn
LEFT_FOR = 1  # days after which the lease bucket the proxy creates expires the leases left in it


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


def lease_place(where: str) -> LeasePlace | None:
    """backorigin_leases: s3://BUCKET/PREFIX/, "bucket" or "off" (ValueError otherwise)."""
    if where == "off":
        return None
    if where == "bucket":
        return LeasePlace(None)
    return LeasePlace(*StoreTombstones.parse(where))  # the same form as backorigin_tombstones'


def _read_place(where: str) -> LeasePlace | None:
    try:
        return lease_place(where)
    except ValueError as e:
        raise exceptions.OptionsError(f"backorigin_leases: {e} (give s3://BUCKET/PREFIX/, bucket or off)") from None


@dataclass(frozen=True)
class LeaseSettings:
    """backorigin_leases, backorigin_lease_ttl, backorigin_lease_wait (miss.fleetleases), and who this proxy is."""

    place: LeasePlace | None = text(  # None: off, each proxy fetches on its own
        "backorigin_leases", DEFAULT_PLACE,
        "Proxies in front of one store fetch a new object once between them, taking turns through a lease "
        "written create-only in the store: s3://BUCKET/PREFIX/ keeps leases in that bucket of the store (a proxy "
        "creates it if the store lacks it); 'bucket' keeps each in the object's own bucket, at its root, while "
        "the object is fetched and stored (for a store where the proxy may not create a bucket); 'off': each "
        "proxy fetches on its own.", read=_read_place)
    ttl: float = seconds(
        "backorigin_lease_ttl", 30.0,
        "Seconds a lease lasts unless its proxy renews it (every third of it, while it fetches and stores the "
        "object): how long a proxy that was killed keeps other proxies waiting for an object.")
    wait: float = seconds(
        "backorigin_lease_wait", 30.0,
        "Most seconds a miss waits for another proxy to fetch and store an object before it fetches it too.",
        zero_is_off=True)
    owner: str = ""


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
    may_be_left: bool = False  # once its object is stored it may be left to run out (miss.leases: release)

    @property
    def name(self) -> tuple[str, str, str]:
        return self.endpoint, self.bucket, self.key


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
        """The lease bucket, created (with a rule expiring the leases left in it) when the store
        lacks it; once per store and bucket."""
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
                logger.info("no lifecycle rule on %s (the leases left there stay): %s", place.bucket, describe_error(e))
        self._ready.add((endpoint, place.bucket))

    def write(self, settings: LeaseSettings, endpoint: str, where: tuple[str, str], of: tuple[str, str],
              **condition: str) -> Lease | None:
        """Write the lease of `of` (bucket, key) under `condition` (IfNoneMatch="*" to create,
        IfMatch=ETag to take over or renew); None when the condition fails (another proxy's turn)."""
        place = settings.place
        if place is not None:
            self.prepare(endpoint, place)
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
        version = _version(answer)
        # left to run out only in a bucket of its own that keeps no versions: in the object's bucket its
        # clients would see it, and a versioned bucket would keep each one for good
        left = place is not None and place.bucket is not None and version is None
        return Lease(endpoint, where[0], where[1], of, answer.get("ETag", ""), version, time.monotonic(), left)

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
