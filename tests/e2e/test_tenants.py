"""No client pays for another (issue 26), through mitmdump against a real SeaweedFS (SigV4 where
authorisation matters) and origins of the tests' own, on loopback. Where a finding was a stall, the
slowest of another client's hits is measured while the attack runs, against the same client's
slowest without it; where it was memory, the proxy's peak RSS (VmHWM) before and after."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.origin_server import ScriptedOrigin, body_for
from tests.support import (
    Mitmdump,
    Relay,
    http_get,
    mirror_rule,
    running_store,
    stored,
    wait_for,
    write_back_worker,
    write_rules,
)

KEYS = ("tenantkey", "tenantsecret")
BUCKET, PUBLIC, PRIVATE = "tenant-bucket", "tenant-public", "tenant-private"
MiB = 1024 * 1024
SIGNED = {"AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1]}


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def client(endpoint: str):
    config = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config,
                        aws_access_key_id=KEYS[0], aws_secret_access_key=KEYS[1])


@pytest.fixture(scope="module")
def signed_store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("tenant-store"), [BUCKET, PUBLIC, PRIVATE], KEYS) as store:
        yield store


@pytest.fixture(scope="module")
def anonymous_store(store):
    """The session's store (anyone may do anything), with this file's buckets."""
    store.create_buckets([BUCKET, PUBLIC, PRIVATE])
    return store


@pytest.fixture(scope="module")
def own_origin():
    origin = ScriptedOrigin().start()
    yield origin
    origin.stop()


def start(workdir: Path, store, rules: dict[str, list[dict]], env: dict[str, str] | None = None, /, **options: str) -> Mitmdump:
    workdir.mkdir(parents=True, exist_ok=True)
    proxy = Mitmdump(f"reverse:{store.endpoint}", write_rules(workdir / "rules.json", rules), workdir / "proxy",
                     {"keep_host_header": "true", "backorigin_origin_timeout": "10", **options})
    if env:  # the write-backs' credentials, as a user exports them
        old = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            return proxy.start()
        finally:
            for name, value in old.items():
                os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return proxy.start()


def slowest_hit(url_client, key: str, during: Callable[[], object]) -> tuple[float, float, int]:
    """The slowest of a client's hits of a stored key while `during()` runs, the slowest of as many
    hits without it (just before, the same client), and how many hits were timed."""

    def hits(until: Callable[[], bool]) -> list[float]:
        timed: list[float] = []
        while not until() and len(timed) < 10_000:
            started = time.monotonic()
            url_client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            timed.append(time.monotonic() - started)
        return timed

    done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        timing = pool.submit(hits, done.is_set)
        try:
            during()
        finally:
            done.set()
        attacked = timing.result(timeout=120)
    quiet_until = time.monotonic() + max(1.0, sum(attacked))
    quiet = hits(lambda: time.monotonic() > quiet_until)
    return max(attacked), max(quiet), len(attacked)


def assert_no_stall(what: str, attacked: float, quiet: float, count: int) -> None:
    print(f"{what}: the slowest of {count} hits {attacked:.3f}s during the attack, {quiet:.3f}s without")
    assert count >= 2 and attacked < 0.5 + 2 * quiet, f"{what}: {attacked:.2f}s during, {quiet:.2f}s without"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, signed_store, own_origin):
    """A proxy in front of the SigV4 store whose bucket mirrors from the scripted origin."""
    proxy = start(tmp_path_factory.mktemp("tenant-proxy"), signed_store, {BUCKET: [mirror_rule(1, f"{own_origin.base}/dir1/")]},
                  SIGNED)
    signed = client(proxy.url)
    signed.put_object(Bucket=BUCKET, Key="stored/hit", Body=b"h" * 1024)
    yield proxy, signed
    proxy.stop()


# XML ------------------------------------------------------------------------------------------


def test_an_unsigned_delete_objects_of_eight_megabytes_stalls_nobody(guarded):
    """It stalled the proxy 2.9-4.6 s per request, parsed whole on the event loop before the store answered."""
    proxy, signed = guarded
    body = b"<Delete>" + (b"<Object><Key>k/" + b"x" * 200 + b"</Key></Object>") * 36_000 + b"</Delete>"
    assert 7 * MiB < len(body) < 8 * MiB

    def attack() -> None:
        for _ in range(3):
            assert requests.post(f"{proxy.url}/{BUCKET}?delete", data=body, timeout=120).status_code == 403

    assert_no_stall("7.9 MB DeleteObjects", *slowest_hit(signed, "stored/hit", attack))
    assert "Traceback" not in proxy.log()


def entity_bomb(size: int, outer: bytes, inner: bytes) -> bytes:
    """A document of about `size` bytes whose internal entity expat would expand about 80-fold
    (it stops at 100 times the input read so far)."""
    text = (b"&a;" + b"z" * 7) * 9
    element = b"<" + outer + b"><" + inner + b">" + text + b"</" + inner + b"></" + outer + b">"
    return (b'<!DOCTYPE d [<!ENTITY a "' + b"a" * 1000 + b'">]><Root>' + element * (size // len(element)) + b"</Root>")


def test_an_entity_laden_delete_objects_costs_no_memory(guarded):
    """7.3 MB with internal entities raised peak RSS from 105 MB to 1.29 GB."""
    proxy, _ = guarded
    before = peak_rss(proxy.pid)
    bomb = entity_bomb(4 * MiB, b"Object", b"Key").replace(b"Root>", b"Delete>")
    answer = requests.post(f"{proxy.url}/{BUCKET}?delete", data=bomb, timeout=120)
    assert answer.status_code in (400, 403)
    grown = peak_rss(proxy.pid) - before
    print(f"entity-laden DeleteObjects: peak RSS {before / MiB:.0f} MiB -> +{grown / MiB:.0f} MiB")
    assert grown < 100 * MiB


class BombListing(ThreadingHTTPServer):
    """An 'S3 origin' whose every listing declares entities that expand a hundredfold."""

    def __init__(self) -> None:
        body = entity_bomb(4 * MiB, b"Contents", b"Key").replace(b"Root>", b"ListBucketResult>")
        self.asked = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.asked += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_an_origin_listing_with_entities_costs_no_memory(tmp_path, signed_store):
    """With the merged listing on, one anonymous listing against an origin that answers with a DTD
    raised peak RSS to 1.31 GB: botocore's parser expanded its entities."""
    bomb = BombListing()
    proxy = start(tmp_path, signed_store, {BUCKET: [mirror_rule(1, f"{bomb.url}/origin-bucket/")]}, SIGNED,
                  backorigin_merged_listing="true")
    try:
        before = peak_rss(proxy.pid)
        listed = client(proxy.url).list_objects_v2(Bucket=BUCKET, Prefix="nothing-here/")
        grown = peak_rss(proxy.pid) - before
    finally:
        proxy.stop()
        bomb.shutdown()
    print(f"entity-laden origin listing: peak RSS {before / MiB:.0f} MiB -> +{grown / MiB:.0f} MiB")
    assert listed.get("KeyCount", 0) == 0 and bomb.asked >= 1
    assert grown < 100 * MiB  # a boto3 client for the origin, its answer read
    assert "does not answer like an S3 bucket" in proxy.log() and "DOCTYPE" in proxy.log()


# what is remembered -------------------------------------------------------------------------


def test_a_404_for_one_query_or_header_is_not_everyones(tmp_path, anonymous_store, own_origin):
    """With MirrorPassQueryString or a passed User-Agent, one ?bad=1 or one odd agent made the
    origin answer 404, and every client then got 404 for that key for 60 s."""
    rule = mirror_rule(1, f"{own_origin.base}/dir1/", MirrorPassQueryString=True, MirrorHeaders={"Pass": ["user-agent"]})
    proxy = start(tmp_path, anonymous_store, {BUCKET: [rule]}, backorigin_origin_404_ttl="600")
    try:
        for key, query, headers in (("picky/q", "?bad=1", {}), ("picky/ua", "", {"User-Agent": "odd"})):
            url = f"{proxy.url}/{BUCKET}/{key}"
            for _ in range(2):  # remembered for that very request: the origin is asked once
                assert requests.get(url + query, headers=headers, timeout=30).status_code == 404
            assert own_origin.count("GET", key) == 1
            answer = requests.get(url, timeout=30)
            assert (answer.status_code, answer.content) == (200, body_for(f"/dir1/{key}")), key  # not for anyone else
    finally:
        proxy.stop()


# tenants ------------------------------------------------------------------------------------


@pytest.fixture
def two_tenants(tmp_path, anonymous_store, own_origin):
    """A public bucket read anonymously and a private one read with signed requests (the store
    here lets anyone in: the proxy tells the two by the request), both mirroring from one origin host."""
    rules = {bucket: [mirror_rule(1, f"{own_origin.base}/dir1/")] for bucket in (PUBLIC, PRIVATE)}
    own_origin.gate.clear()

    def proxy(**options: str) -> Mitmdump:
        return start(tmp_path, anonymous_store, rules, None, **options)

    yield proxy
    own_origin.gate.set()


def test_one_buckets_failing_keys_open_no_other_buckets_circuit(two_tenants, own_origin, unique):
    """Six anonymous GETs of failing keys in a public bucket opened the circuit, and a signed GET
    in a private bucket on the same origin host got 424."""
    proxy = two_tenants(backorigin_breaker_failures="3", backorigin_breaker_cooldown="60")
    try:
        for i in range(6):
            assert http_get(f"{proxy.url}/{PUBLIC}/error500/{unique}-{i}")[0] == 424
        assert len(own_origin.requests_for(f"error500/{unique}")) == 3  # then the public bucket's circuit is open
        key = f"ok/{unique}"
        assert client(proxy.url).get_object(Bucket=PRIVATE, Key=key)["Body"].read() == body_for(f"/dir1/{key}")
        assert http_get(f"{proxy.url}/{PRIVATE}/{key}-anonymous")[0] == 200  # and the private bucket's anonymous clients
    finally:
        proxy.stop()


def test_public_misses_filling_the_queue_leave_a_private_bucket_its_share(two_tenants, own_origin, unique):
    """1,100 anonymous slow misses filled the queue and a signed GET in another bucket got 503 SlowDown."""
    proxy = two_tenants(backorigin_origin_concurrency="2", backorigin_origin_queue="4")
    try:
        with ThreadPoolExecutor(8) as pool:
            public = [pool.submit(http_get, f"{proxy.url}/{PUBLIC}/gate/{unique}-{i}") for i in range(7)]
            wait_for(lambda: sum(f.done() for f in public) == 1 and own_origin.in_flight == 2, within=30)  # 2 run, 4 wait
            assert [f.result()[0] for f in public if f.done()] == [503]
            private = pool.submit(lambda: client(proxy.url).get_object(Bucket=PRIVATE, Key=f"gate/{unique}")["Body"].read())
            wait_for(lambda: sum(f.done() for f in public) == 2, within=30)  # the newest public waiter made room
            assert not private.done()
            own_origin.gate.set()
            assert private.result(timeout=60) == body_for(f"/dir1/gate/{unique}")
            assert sorted(f.result()[0] for f in public) == [200] * 5 + [503] * 2
    finally:
        own_origin.gate.set()
        proxy.stop()


# deletes that stick ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, mounted as root (CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True, capture_output=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_delete_is_answered_yes_only_once_its_tombstone_is_durable(tmp_path, small_disk, anonymous_store, own_origin, unique):
    """A DELETE was answered 204 while writing its tombstone failed with ENOSPC; once space
    returned, the next GET mirrored the object back. Now: no room, 503 and the store is not asked;
    room, 204, and the tombstone survives kill -9."""
    store = anonymous_store
    s3 = store.client()
    key = f"ok/{unique}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"in the store")
    options = {"backorigin_spool_dir": str(small_disk / "spool"), "backorigin_spool_min_free": "0"}
    rules = {BUCKET: [mirror_rule(1, f"{own_origin.base}/dir1/")]}
    proxy = start(tmp_path / "first", store, rules, None, **options)
    ballast = small_disk / "ballast"
    try:
        disk = os.statvfs(small_disk)
        with open(ballast, "wb") as out:
            out.write(b"\0" * (disk.f_bavail * disk.f_frsize))  # not a byte left
        answer = requests.delete(f"{proxy.url}/{BUCKET}/{key}", timeout=30)
        assert answer.status_code == 503 and answer.headers.get("retry-after")
        many = f"<Delete><Object><Key>{key}</Key></Object></Delete>".encode()
        assert requests.post(f"{proxy.url}/{BUCKET}?delete", data=many, timeout=30).status_code == 503
        assert stored(s3, BUCKET, key) is not None  # the store was never asked
        ballast.unlink()
        assert requests.delete(f"{proxy.url}/{BUCKET}/{key}", timeout=30).status_code == 204
        assert proxy.process is not None
        proxy.process.kill()  # kill -9, right after the answer
        proxy.process.wait()
    finally:
        proxy.stop()
    again = start(tmp_path / "second", store, rules, None, **options)
    try:
        for _ in range(2):
            assert http_get(f"{again.url}/{BUCKET}/{key}")[0] == 404
        assert own_origin.count("GET", key) == 0
    finally:
        again.stop()


def test_a_delete_never_waits_for_an_upload_even_a_stuck_one(tmp_path, anonymous_store, own_origin, unique):
    """A DELETE of a key whose write-back was uploading waited for the upload (13 s for 1.2 GB),
    and timed out after 60 s with the worker stuck. Now it is answered at once, and the write-back
    it overtook never lands, however long the worker was stuck."""
    store = anonymous_store
    s3 = store.client()
    relay = Relay(store.s3_port, delay=2.0)  # each write-back is held 2 s on its way to the store
    proxy = start(tmp_path, store, {BUCKET: [mirror_rule(1, f"{own_origin.base}/dir1/")]},
                  backorigin_s3_endpoint=f"http://127.0.0.1:{relay.port}", backorigin_writeback_workers="1")
    uploading, queued = f"ok/{unique}-uploading", f"ok/{unique}-queued"
    worker = 0
    try:
        for key in (uploading, queued):
            assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200
        wait_for(lambda: relay.accepted, within=30)  # the first is on its way to the store
        worker = write_back_worker(proxy.pid)
        os.kill(worker, signal.SIGSTOP)
        for key in (queued, uploading):
            started = time.monotonic()
            assert requests.delete(f"{proxy.url}/{BUCKET}/{key}", timeout=90).status_code == 204
            assert time.monotonic() - started < 2.0
        os.kill(worker, signal.SIGCONT)
        # both write-backs have ended (their manifests left the spool: withdrawn, or landed and removed
        # again) and neither object is in the store
        wait_for(lambda: not list(proxy.spool.glob("*.json")) and stored(s3, BUCKET, uploading) is None
                 and stored(s3, BUCKET, queued) is None, within=30)
        for key in (uploading, queued):
            assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 404
        assert own_origin.count("GET", unique) == 2
    finally:
        if worker:
            os.kill(worker, signal.SIGCONT)
        proxy.stop()
        relay.close()


def test_a_delete_on_its_way_when_the_proxy_is_killed_is_resolved_by_asking_the_store(tmp_path, anonymous_store, own_origin,
                                                                                       unique):
    """kill -9 while a DELETE is on its way to the store (held 3 s there): at the next start the
    store is asked, the key is gone, its tombstone is written, and the origin's copy does not come
    back; nothing else is hidden. (tests/unit/test_deletes_tombstones.py: an intent hides nothing.)"""
    store, s3 = anonymous_store, anonymous_store.client()
    gone, kept = f"ok/{unique}-gone", f"ok/{unique}-kept"
    for key in (gone, kept):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"in the store")
    relay = Relay(store.s3_port, delay=3.0)
    rules = {BUCKET: [mirror_rule(1, f"{own_origin.base}/dir1/")]}
    spool = str(tmp_path / "spool")
    slow = Mitmdump(f"reverse:http://127.0.0.1:{relay.port}", write_rules(tmp_path / "rules.json", rules), tmp_path / "slow",
                    {"backorigin_spool_dir": spool, "backorigin_s3_endpoint": store.endpoint}).start()
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(requests.delete, f"{slow.url}/{BUCKET}/{gone}", timeout=30)
            wait_for(lambda: list((tmp_path / "spool" / "tombstones" / "pending").glob("*.json")), within=10)
            assert slow.process is not None
            slow.process.kill()  # kill -9 with the delete at the store's door
            slow.process.wait()
        s3.delete_object(Bucket=BUCKET, Key=gone)  # what the store did with it (the relay may deliver it too)
        again = start(tmp_path / "again", store, rules, None, backorigin_spool_dir=spool)
        try:
            wait_for(lambda: "deleted while the proxy stopped" in again.log(), within=30)
            assert http_get(f"{again.url}/{BUCKET}/{gone}")[0] == 404 and own_origin.count("GET", gone) == 0
            assert http_get(f"{again.url}/{BUCKET}/{kept}")[2] == b"in the store"
            assert list((tmp_path / "spool" / "tombstones" / "pending").glob("*.json")) == []
        finally:
            again.stop()
    finally:
        slow.stop()
        relay.close()


def test_a_signed_delete_objects_withdraws_exactly_the_pending_write_backs_of_its_keys(tmp_path, signed_store, own_origin,
                                                                                        unique):
    """A signed DeleteObjects with write-backs pending (the worker stopped): the write-backs of its
    keys are withdrawn, never tried, and every other one lands with the origin's bytes. (Each key
    once looked through all the pending write-backs: 37 s with 400 of them; the work is counted in
    tests/unit/test_writeback_supervisor.py.)"""
    proxy = start(tmp_path, signed_store, {BUCKET: [mirror_rule(1, f"{own_origin.base}/dir1/")]}, SIGNED,
                  backorigin_writeback_workers="1")
    signed, direct = client(proxy.url), client(signed_store.endpoint)
    prefix = f"pending/{unique}/"
    first = f"{prefix}first"
    kept, deleted = [f"{prefix}kept-{i}.bin" for i in range(20)], [f"{prefix}deleted-{i}.bin" for i in range(20)]
    worker = 0
    try:
        assert signed.get_object(Bucket=BUCKET, Key=first)["Body"].read() == body_for(f"/dir1/{first}")
        wait_for(lambda: stored(direct, BUCKET, first), within=30)  # the worker is up
        worker = write_back_worker(proxy.pid)
        os.kill(worker, signal.SIGSTOP)  # every write-back from now on stays pending
        with ThreadPoolExecutor(4) as pool:
            for keys in (kept, deleted):  # the kept first: the worker's one upload thread is busy with them
                bodies = list(pool.map(lambda key: signed.get_object(Bucket=BUCKET, Key=key)["Body"].read(), keys))
                assert bodies == [body_for(f"/dir1/{key}") for key in keys]
        # a client has its last byte a moment before the proxy spools the write-back: wait for all 40
        wait_for(lambda: len(list(proxy.spool.glob("*.json"))) == len(kept) + len(deleted), within=30)
        asked = deleted + [f"{prefix}never-{i}" for i in range(400)]  # with keys that have nothing pending
        answer = signed.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key} for key in asked]})
        assert not answer.get("Errors") and len(answer["Deleted"]) == len(asked)
        os.kill(worker, signal.SIGCONT)
        wait_for(lambda: not list(proxy.spool.glob("*.json")), within=60)  # every write-back has ended
        listed = [item["Key"] for page in direct.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                  for item in page.get("Contents", [])]
        assert sorted(listed) == sorted([first, *kept])
        for key in [first, *kept]:
            landed = direct.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert hashlib.sha256(landed).hexdigest() == hashlib.sha256(body_for(f"/dir1/{key}")).hexdigest(), key
            assert own_origin.count("GET", key) == 1, key
        # withdrawn: never tried (a write-back of a deleted key that is tried is dropped by its tombstone, and logged)
        lines = [line for line in proxy.log().splitlines() if "write-back" in line]
        tried = [line for line in lines if any(f"s3://{BUCKET}/{key} " in line for key in deleted)]
        assert tried == []
    finally:
        if worker:
            os.kill(worker, signal.SIGCONT)
        proxy.stop()


def test_deletes_objects_forgetting_keys_among_many_remembered_404s_stall_nobody(guarded, own_origin, unique):
    """A DeleteObjects forgets the origin 404s remembered for its keys: each key once looked
    through every 404 remembered, on the event loop. The slowest of another client's hits while
    three signed DeleteObjects of 1,000 keys each run at once, with 300 origin 404s remembered
    (of other keys: they stay), against the same without any remembered."""
    proxy, signed = guarded

    def deletes(name: str) -> Callable[[], None]:
        def delete(part: int) -> None:
            keys = [f"forget/{unique}/{name}-{part}-{i}" for i in range(1000)]
            answer = signed.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True})
            assert not answer.get("Errors")

        def attack() -> None:
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(delete, range(3)))
        return attack

    without, _, _ = slowest_hit(signed, "stored/hit", deletes("without"))

    def miss(key: str) -> int:
        try:
            signed.get_object(Bucket=BUCKET, Key=key)
        except ClientError as e:
            return int(e.response["ResponseMetadata"]["HTTPStatusCode"])
        return 200

    remembered = [f"missing/{unique}/{i}.bin" for i in range(300)]
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(miss, remembered)) == {404}
    assert miss(remembered[0]) == 404 and own_origin.count("GET", remembered[0]) == 1  # remembered: not asked again
    attacked, _, count = slowest_hit(signed, "stored/hit", deletes("with"))
    print(f"3 DeleteObjects of 1,000 keys: the slowest hit {without:.3f}s without remembered 404s, {attacked:.3f}s with 300")
    assert count >= 2 and attacked < 0.5 + 2 * without, f"{attacked:.2f}s with 300 remembered 404s, {without:.2f}s without"
