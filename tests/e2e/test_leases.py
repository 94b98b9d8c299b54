"""The fleet's leases (miss.leases) against a real SeaweedFS, in this process: several `Leases`
stand for several proxies. Who fetches, who waits, what a waiting proxy does once the object is
stored, when a lease runs out, that a live holder keeps it, and what is left in the store."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from urllib.parse import urlsplit

import pytest

from backorigin.miss.leases import LONGEST_PAUSE, Leases
from backorigin.miss.leasestore import IN_BUCKET_PREFIX, TIMEOUT, LeasePlace, LeaseSettings, LeaseStore
from backorigin.s3.clients import make_s3_client
from tests.support import running_store

BUCKET = "fleet-bucket"
VERSIONED = "fleet-versioned"
KEYS = ("leasekey", "leasesecret")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("lease-store"), [BUCKET, VERSIONED], KEYS) as store:
        store.client().put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
        yield store


@pytest.fixture(scope="module")
def client(store, monkeypatch_module):
    return make_s3_client(store.endpoint)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """The proxy's own credentials come from boto3's chain: here, the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("AWS_ACCESS_KEY_ID", KEYS[0]), ("AWS_SECRET_ACCESS_KEY", KEYS[1]),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            patch.setenv(name, value)
        yield patch


def proxy(name: str, place: LeasePlace | None = None, ttl: float = 30.0, wait: float = 30.0,
          sent: list[str] | None = None) -> Leases:
    """One proxy's leases (its own store client, as another process would have); `sent` gets each
    request it makes of the store ("PUT If-None-Match", "HEAD", ...)."""
    clients: dict[str, object] = {}

    def client(endpoint: str) -> object:
        if endpoint not in clients:
            clients[endpoint] = made = make_s3_client(endpoint, TIMEOUT)
            if sent is not None:
                made.meta.events.register("before-send.s3", partial(record, sent))
        return clients[endpoint]

    return Leases(LeaseSettings(place or LeasePlace("backorigin-leases"), ttl, wait, name), LeaseStore(client))


async def until(check, within: float = 15.0) -> None:
    """Poll `check()` on the event loop until it holds (at most `within` seconds)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"condition not met within {within:g}s"
        await asyncio.sleep(0.01)


def record(sent: list[str], request, **_) -> None:
    """An object's request (not the lease bucket's, looked at once per proxy) as "METHOD lease|object
    [If-Match|If-None-Match]"."""
    if "/" in urlsplit(request.url).path.strip("/"):
        sent.append(described(request))


def described(request) -> str:
    condition = next((name for name in ("If-None-Match", "If-Match") if name in request.headers), "")
    target = "lease" if "/backorigin-leases/" in request.url or IN_BUCKET_PREFIX in request.url else "object"
    return " ".join(part for part in (request.method, target, condition) if part)


def leases_in(client, bucket: str, prefix: str = "") -> list[str]:
    return [entry["Key"] for entry in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


async def settle(*leases: Leases) -> None:
    for one in leases:
        await one.aclose(10)


async def test_one_proxy_fetches_the_other_waits_for_the_stored_object(store, client, unique):
    """The waiting proxy looks at the object itself: once it is stored the store answers, while
    the lease is still there; the holder then leaves its lease to run out."""
    sent: list[str] = []
    looked: list[str] = []
    first, second = proxy("first", sent=sent), proxy("second", sent=looked)
    key = (store.endpoint, BUCKET, f"a/{unique}")
    held = await first.take(key)
    assert held.lease is not None and not held.stored
    waiting = asyncio.ensure_future(second.take(key))
    await until(lambda: "HEAD object" in looked)  # it found the lease taken and waits, looking at the object
    assert not waiting.done(), "the second proxy waits while the first holds the lease"
    client.put_object(Bucket=BUCKET, Key=key[2], Body=b"stored by the first proxy's write-back")
    turn = await asyncio.wait_for(waiting, 10)
    assert turn.stored and turn.lease is None
    first.release(held.lease, stored=True)
    assert (first.counts["held"], second.counts["waited"]) == (1, 1)
    await settle(first, second)
    assert sent == ["PUT lease If-None-Match"], "the holder's one request: the lease's write; it is left to run out"
    (left,) = [name for name in leases_in(client, "backorigin-leases") if name == held.lease.key]
    assert client.head_object(Bucket="backorigin-leases", Key=left)["ETag"] == held.lease.etag


async def test_a_key_missed_again_by_the_proxy_that_left_its_lease_costs_one_request(store, client, unique):
    """Deleted and missed again within the lease's life: the proxy that left it takes it back
    (If-Match on the version it left), and that is all it asks of the store."""
    sent: list[str] = []
    holder = proxy("holder", sent=sent)
    key = (store.endpoint, BUCKET, f"again/{unique}")
    held = await holder.take(key)
    assert held.lease is not None
    holder.release(held.lease, stored=True)
    sent.clear()
    again = await asyncio.wait_for(holder.take(key), 10)
    assert again.lease is not None and again.lease.etag != held.lease.etag
    assert sent == ["PUT lease If-Match"]
    assert holder.counts["held"] == 2 and holder.counts["taken_over"] == 0
    await settle(holder)


async def test_another_proxy_missing_a_key_again_waits_for_the_left_lease_to_run_out(store, client, unique):
    """Another proxy cannot tell a left lease from a renewed one before it runs out: it waits at
    most its time to live, then takes it over (three requests: the create, a look, the take-over)."""
    ttl = 2.0
    sent: list[str] = []
    holder, other = proxy("holder", ttl=ttl), proxy("other", ttl=ttl, sent=sent)
    key = (store.endpoint, BUCKET, f"deleted/{unique}")
    held = await holder.take(key)
    assert held.lease is not None
    holder.release(held.lease, stored=True)  # stored, then deleted: the key is missed again
    left = time.monotonic()
    turn = await asyncio.wait_for(other.take(key), 20)
    took = time.monotonic() - left
    assert turn.lease is not None and other.counts["taken_over"] == 1
    assert ttl - 1 <= took <= ttl + 1 + LONGEST_PAUSE + 1.5, f"held {took:.1f}s by a lease of {ttl}s"
    assert sent[0] == "PUT lease If-None-Match" and sent[-1] == "PUT lease If-Match"
    # while it waits it looks at the lease and the object (a loaded machine may give it time for one look only)
    assert "HEAD lease" in sent[1:-1] and set(sent[1:-1]) <= {"HEAD lease", "HEAD object"}, sent
    other.release(turn.lease, stored=True)
    sent.clear()
    late = proxy("late", ttl=ttl, sent=sent)
    await asyncio.sleep(ttl + 1.5)
    assert (await asyncio.wait_for(late.take(key), 10)).lease is not None
    assert sent == ["PUT lease If-None-Match", "HEAD lease", "PUT lease If-Match"], "a lease that ran out long ago"
    await settle(holder, other, late)


async def test_a_holder_that_gives_up_hands_the_turn_on(store, client, unique):
    looked: list[str] = []
    first, second = proxy("first"), proxy("second", sent=looked)
    key = (store.endpoint, BUCKET, f"b/{unique}")
    held = await first.take(key)
    assert held.lease is not None
    waiting = asyncio.ensure_future(second.take(key))
    await until(lambda: "HEAD lease" in looked)  # it found the lease taken and waits
    first.release(held.lease, stored=False)  # an origin 404, say: nothing is stored, the lease is removed
    turn = await asyncio.wait_for(waiting, 10)
    assert turn.lease is not None and not turn.stored
    await settle(first, second)


async def test_a_lease_nobody_renews_is_taken_over_once_its_time_has_run_out(store, client, unique):
    """A proxy killed mid-fill: its lease stays in the store, unrenewed."""
    ttl = 2.0
    looked: dict[str, list[str]] = {"waiter": [], "other": []}
    killed, waiter, other = (proxy("killed", ttl=ttl), proxy("waiter", ttl=ttl, sent=looked["waiter"]),
                             proxy("other", ttl=ttl, sent=looked["other"]))
    key = (store.endpoint, BUCKET, f"c/{unique}")
    place = LeasePlace("backorigin-leases")
    assert LeaseStore().write(killed.settings, store.endpoint, place.of(BUCKET, key[2]), (BUCKET, key[2]), IfNoneMatch="*")
    written = time.monotonic()
    tasks = {asyncio.ensure_future(waiter.take(key)): waiter, asyncio.ensure_future(other.take(key)): other}
    done, pending = await asyncio.wait(tasks, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    took = time.monotonic() - written
    assert len(done) == 1 and len(pending) == 1, "one proxy takes it over; the other waits on"
    (first,) = done
    turn = first.result()
    assert turn.lease is not None and tasks[first].counts["taken_over"] == 1
    # the store's Last-Modified has whole seconds; a waiter looks at least every LONGEST_PAUSE
    assert took <= ttl + 1 + LONGEST_PAUSE + 1.5, f"the key was held {took:.1f}s, its lease lasts {ttl}s"
    (still,) = pending
    its = looked[tasks[still].settings.owner]
    seen = len(its)
    await until(lambda: "HEAD lease" in its[seen:])  # it has looked at the new holder's lease, and waits on
    assert not still.done()
    tasks[first].release(turn.lease)  # the new holder gives up in its turn: the last waiter takes it
    assert (await asyncio.wait_for(still, 10)).lease is not None
    await settle(killed, waiter, other)


async def test_a_live_holder_renews_its_lease_past_its_time_to_live(store, client, unique):
    holder, waiter = proxy("holder", ttl=1.5), proxy("waiter", ttl=1.5, wait=5.0)
    key = (store.endpoint, BUCKET, f"d/{unique}")
    held = await holder.take(key)
    assert held.lease is not None
    turn = await asyncio.wait_for(waiter.take(key), 15)
    assert turn.lease is None and not turn.stored, "it waited its 5 s and fetches on its own; it never took the lease over"
    assert waiter.counts["waited_too_long"] == 1 and waiter.counts["taken_over"] == 0
    await settle(holder, waiter)


@pytest.mark.parametrize("place", [LeasePlace(None), LeasePlace(VERSIONED, "leases/")], ids=["bucket", "s3-prefix"])
async def test_leases_in_a_versioned_bucket_leave_no_version_behind(store, client, unique, place):
    """A versioned bucket would keep every version of a lease left to run out: there the holder
    removes its lease (by version id) once the object is stored, and each renewal's old version."""
    renewals: list[str] = []
    holder, waiter = proxy("holder", place, ttl=1.5, sent=renewals), proxy("waiter", place, ttl=1.5)
    key = (store.endpoint, VERSIONED, f"e/{unique}")
    held = await holder.take(key)
    assert held.lease is not None and not held.lease.may_be_left
    waiting = asyncio.ensure_future(waiter.take(key))
    await until(lambda: any(sent.startswith("PUT") and sent.endswith("If-Match") for sent in renewals))  # renewed: a version to remove
    assert not waiting.done()
    client.put_object(Bucket=VERSIONED, Key=key[2], Body=b"object")
    assert (await asyncio.wait_for(waiting, 10)).stored
    holder.release(held.lease, stored=True)
    await settle(holder, waiter)
    lease_prefix = IN_BUCKET_PREFIX if place.bucket is None else place.prefix
    versions = client.list_object_versions(Bucket=VERSIONED, Prefix=lease_prefix)
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []


async def test_a_store_that_refuses_leases_costs_one_attempt_then_none_for_a_while(store, unique, caplog):
    """Credentials the store does not know: the misses fetch on their own, as without leases, and
    only the first asks the store (TROUBLE_PAUSE)."""
    client = refused_client(store.endpoint)
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    refused = Leases(LeaseSettings(LeasePlace("backorigin-leases"), 30.0, 30.0, "refused"), LeaseStore(lambda endpoint: client))
    with caplog.at_level(logging.WARNING, "backorigin.miss.leases"):
        turns = [await refused.take((store.endpoint, BUCKET, f"f/{unique}/{n}")) for n in range(3)]
    assert all(turn.lease is None and not turn.stored for turn in turns)
    assert refused.counts["unavailable"] == 3 and sent == ["HEAD"]  # the lease bucket, refused
    assert len([r for r in caplog.records if "cannot use the lease" in r.getMessage()]) == 1


def refused_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="nobody",
                        aws_secret_access_key="wrong")


def test_the_default_lease_bucket_is_made_with_a_rule_for_what_killed_proxies_leave(store, client):
    LeaseStore().prepare(store.endpoint, LeasePlace("backorigin-leases"))  # a no-op when an earlier test made it
    assert client.head_bucket(Bucket="backorigin-leases")
    rules = client.get_bucket_lifecycle_configuration(Bucket="backorigin-leases")["Rules"]
    assert rules[0]["Expiration"] == {"Days": 1}
