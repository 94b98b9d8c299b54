"""Write-through: every write the store accepts through the proxy reaches the bucket's S3 origin
(a second SeaweedFS with SigV4 identities of its own), with the same bytes, in order per key,
across an origin that is unreachable for a while and kill -9 of the proxy and of its worker; a
write the store refuses reaches nothing; `backorigin verify --check origin` finds what a rollback
would lose. Real mitmdump, real clients (the AWS CLI, boto3)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from backorigin.writethrough.journal import Journal
from tests.clients import Target, boto3_client, sha256_of_file
from tests.support import Relay, run_cli, running, wait_for, write_back_worker
from tests.writethrough_support import (
    AWAY,
    BUCKET,
    ORIGIN_BUCKET,
    ORIGIN_VERSIONED,
    PLAIN,
    STORE_ENV,
    STORE_KEYS,
    VERSIONED,
    Proxy,
    aws,
    sha,
    sha256_of,
    start_origin,
    start_the_store,
    write_through_rules,
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    origin = start_origin(tmp_path_factory.mktemp("wt-origin"))
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def wt_store(tmp_path_factory):
    store = start_the_store(tmp_path_factory.mktemp("wt-store"))
    yield store
    store.stop()


@pytest.fixture(scope="module")
def wt_proxy(tmp_path_factory, wt_store, origin):
    workdir = tmp_path_factory.mktemp("wt-proxy")
    proxy = Proxy.of(workdir, wt_store, write_through_rules(workdir / "rules.json", origin.endpoint)).start()
    yield proxy
    proxy.stop()


def file_of(path: Path, size: int, seed: str) -> Path:
    """`size` bytes that differ from file to file (a seeded SHAKE stream), written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hashlib.shake_256(seed.encode()).digest(size))
    return path


def same_at_both(store, origin, key: str, expected: str | None, bucket: str = BUCKET, origin_bucket: str = ORIGIN_BUCKET) -> None:
    assert sha256_of(store.client(), bucket, key) == expected, key
    assert sha256_of(origin.client(), origin_bucket, key) == expected, key


# every kind of write, by real clients ----------------------------------------------------------


def test_every_kind_of_write_reaches_the_origin_with_the_stores_bytes(tmp_path, wt_store, origin, wt_proxy, unique):
    old = origin.client()
    for name in ("gone", "many/a", "many/b"):  # not migrated yet: only the origin has them
        old.put_object(Bucket=ORIGIN_BUCKET, Key=f"{unique}/legacy/{name}", Body=b"legacy")
    small, big = file_of(tmp_path / "small", 1234, unique), file_of(tmp_path / "big", 40 * MiB + 5, unique)
    base = f"s3://{BUCKET}/{unique}"
    # the AWS CLI: PutObject, a multipart upload (8 MiB parts), CopyObject, DeleteObject, DeleteObjects
    aws(wt_proxy, tmp_path, "cp", str(small), f"{base}/cli/small")
    aws(wt_proxy, tmp_path, "cp", str(big), f"{base}/cli/big")
    aws(wt_proxy, tmp_path, "cp", f"{base}/cli/small", f"{base}/cli/copied")
    for name in ("a", "b"):
        aws(wt_proxy, tmp_path, "cp", str(small), f"{base}/cli/many/{name}")
    aws(wt_proxy, tmp_path, "rm", "--recursive", f"{base}/cli/many/")
    aws(wt_proxy, tmp_path, "rm", f"{base}/legacy/gone")
    # boto3: PutObject with headers and metadata, upload_file in parts, CopyObject replacing the
    # metadata, DeleteObjects of keys only the origin had
    sdk = wt_proxy.client()
    sdk.put_object(Bucket=BUCKET, Key=f"{unique}/sdk/put", Body=small.read_bytes(), ContentType="text/x-test",
                   CacheControl="max-age=60", Metadata={"color": "blue"})
    sdk.upload_file(str(big), BUCKET, f"{unique}/sdk/multipart",
                    Config=TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB))
    sdk.copy_object(Bucket=BUCKET, Key=f"{unique}/sdk/copied", CopySource={"Bucket": BUCKET, "Key": f"{unique}/sdk/put"},
                    MetadataDirective="REPLACE", Metadata={"color": "red"}, ContentType="text/x-copy")
    answer = sdk.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"{unique}/legacy/many/a"},
                                                                   {"Key": f"{unique}/legacy/many/b"}]})
    assert not answer.get("Errors")
    wt_proxy.wait_applied()

    small_sha, big_sha = sha256_of_file(small), sha256_of_file(big)
    for key, expected in {"cli/small": small_sha, "cli/big": big_sha, "cli/copied": small_sha, "sdk/put": small_sha,
                          "sdk/multipart": big_sha, "sdk/copied": small_sha, "cli/many/a": None, "cli/many/b": None,
                          "legacy/gone": None, "legacy/many/a": None, "legacy/many/b": None}.items():
        same_at_both(wt_store, origin, f"{unique}/{key}", expected)
    put = old.head_object(Bucket=ORIGIN_BUCKET, Key=f"{unique}/sdk/put")
    assert (put["ContentType"], put["CacheControl"], put["Metadata"]) == ("text/x-test", "max-age=60", {"color": "blue"})
    copied = old.head_object(Bucket=ORIGIN_BUCKET, Key=f"{unique}/sdk/copied")
    assert (copied["ContentType"], copied["Metadata"]) == ("text/x-copy", {"color": "red"})
    assert old.head_object(Bucket=ORIGIN_BUCKET, Key=f"{unique}/cli/big")["ContentLength"] == 40 * MiB + 5


def test_a_versioned_buckets_current_object_is_what_the_origin_gets(wt_store, origin, wt_proxy, unique):
    """A version's delete leaves the key's current object (or none) in the store: the origin gets that."""
    sdk, key = wt_proxy.client(), f"{unique}/versioned"
    first = sdk.put_object(Bucket=VERSIONED, Key=key, Body=b"first")["VersionId"]
    second = sdk.put_object(Bucket=VERSIONED, Key=key, Body=b"second")["VersionId"]
    assert first != second
    steps = [  # (the write, what the origin then has)
        (lambda: None, b"second"),
        (lambda: sdk.delete_object(Bucket=VERSIONED, Key=key, VersionId=second), b"first"),
        (lambda: sdk.delete_object(Bucket=VERSIONED, Key=key), None),  # a delete marker
    ]
    for write, expected in steps:
        write()
        wt_proxy.wait_applied()
        same_at_both(wt_store, origin, key, None if expected is None else hashlib.sha256(expected).hexdigest(), VERSIONED,
                     ORIGIN_VERSIONED)
    marker = next(m["VersionId"] for m in wt_store.client().list_object_versions(Bucket=VERSIONED, Prefix=key)["DeleteMarkers"])
    sdk.delete_object(Bucket=VERSIONED, Key=key, VersionId=marker)  # the delete marker's own delete: "first" is back
    wt_proxy.wait_applied()
    same_at_both(wt_store, origin, key, hashlib.sha256(b"first").hexdigest(), VERSIONED, ORIGIN_VERSIONED)


def test_a_large_copy_the_origin_has_already_is_not_sent_again(wt_store, origin, wt_proxy, unique):
    """Deleting a version that is not the current one leaves the key as it was: the origin's copy
    (2 MiB) is compared, not sent again."""
    sdk, key = wt_proxy.client(), f"{unique}/large"
    older = sdk.put_object(Bucket=VERSIONED, Key=key, Body=b"o" * 2 * MiB)["VersionId"]
    sdk.put_object(Bucket=VERSIONED, Key=key, Body=b"n" * 2 * MiB)
    wt_proxy.wait_applied()
    unchanged = wt_proxy.metric("backorigin_writethrough_synced_total", action="unchanged")
    sdk.delete_object(Bucket=VERSIONED, Key=key, VersionId=older)
    wt_proxy.wait_applied()
    assert wt_proxy.metric("backorigin_writethrough_synced_total", action="unchanged") == unchanged + 1
    landed = origin.client().list_object_versions(Bucket=ORIGIN_VERSIONED, Prefix=key)["Versions"]
    assert len(landed) <= 2  # the newer one, and the older one unless it was coalesced away; no third copy
    same_at_both(wt_store, origin, key, sha(b"n" * 2 * MiB), VERSIONED, ORIGIN_VERSIONED)


def test_rapid_rewrites_of_one_key_land_at_the_origin_in_order(wt_store, origin, wt_proxy, unique):
    """200 writes of one key, back to back: the origin's version history (its bucket is versioned)
    shows what landed there and in which order; a later write never lands before an earlier one.
    (The same state may land twice: a sync that copied write 93 for write 92's entry, and the sync
    of write 93's entry reading 93 again before write 94.)"""
    sdk, key, count = wt_proxy.client(), f"{unique}/rewritten", 200
    for number in range(count):
        sdk.put_object(Bucket=VERSIONED, Key=key, Body=f"write {number:04d}".encode())
    wt_proxy.wait_applied()
    old = origin.client()
    versions = old.list_object_versions(Bucket=ORIGIN_VERSIONED, Prefix=key)["Versions"]  # newest first
    landed = [old.get_object(Bucket=ORIGIN_VERSIONED, Key=key, VersionId=v["VersionId"])["Body"].read() for v in versions]
    numbers = [int(body.split()[1]) for body in reversed(landed)]
    assert numbers == sorted(numbers), numbers  # never an earlier write after a later one (a state copied twice may be)
    assert numbers[-1] == count - 1
    assert len(set(numbers)) < count  # writes made while a copy was under way were applied by one copy
    assert old.get_object(Bucket=ORIGIN_VERSIONED, Key=key)["Body"].read() == f"write {count - 1:04d}".encode()


# what must not reach the origin ----------------------------------------------------------------


def test_writes_the_store_refuses_reach_nothing(tmp_path, wt_store, origin, wt_proxy, unique):
    old = origin.client()
    old.put_object(Bucket=ORIGIN_BUCKET, Key=f"{unique}/kept", Body=b"kept")
    synced_before = sum(wt_proxy.metric("backorigin_writethrough_synced_total", action=action)
                        for action in ("put", "delete", "unchanged"))
    refused = []
    anonymous = boto3_client(Target(wt_proxy.url, "", ""), signature_version=UNSIGNED)
    forged = boto3_client(Target(wt_proxy.url, STORE_KEYS[0], "not-the-secret"))
    for client in (anonymous, forged):
        for attempt in (lambda c=client: c.put_object(Bucket=BUCKET, Key=f"{unique}/refused", Body=b"no"),
                        lambda c=client: c.delete_object(Bucket=BUCKET, Key=f"{unique}/kept"),
                        lambda c=client: c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"{unique}/kept"}]}),
                        lambda c=client: c.copy_object(Bucket=BUCKET, Key=f"{unique}/refused",
                                                       CopySource={"Bucket": BUCKET, "Key": f"{unique}/kept"})):
            with pytest.raises(ClientError) as refusal:
                attempt()
            refused.append(refusal.value.response["ResponseMetadata"]["HTTPStatusCode"])
    # a bucket without WriteThrough: its writes stay in the store
    wt_proxy.client().put_object(Bucket=PLAIN, Key=f"{unique}/plain", Body=b"plain")
    wt_proxy.client().put_object(Bucket=BUCKET, Key=f"{unique}/canary", Body=b"canary")  # one write that is accepted
    wt_proxy.wait_applied()
    assert set(refused) == {403}
    assert sha256_of(old, ORIGIN_BUCKET, f"{unique}/kept") == hashlib.sha256(b"kept").hexdigest()
    assert sha256_of(old, ORIGIN_BUCKET, f"{unique}/refused") is None
    assert sha256_of(old, ORIGIN_BUCKET, f"{unique}/plain") is None
    assert sha256_of(old, ORIGIN_BUCKET, f"{unique}/canary") == hashlib.sha256(b"canary").hexdigest()
    synced_after = sum(wt_proxy.metric("backorigin_writethrough_synced_total", action=action)
                       for action in ("put", "delete", "unchanged"))
    assert synced_after - synced_before == 1  # the canary: nothing else was journaled
    worker_lines = [line for line in wt_proxy.log().splitlines() if "write-through worker:" in line]
    assert not [line for line in worker_lines if f"{unique}/refused" in line or f"{unique}/kept" in line]


# an origin away, kill -9 -----------------------------------------------------------------------


@pytest.fixture
def own_origin(tmp_path):
    """An origin of the test's own, so that it may stop it and start it again."""
    origin = start_origin(tmp_path / "own-origin")
    yield origin
    origin.stop()


def test_an_origin_unreachable_for_a_while_gets_every_write_once_it_is_back(tmp_path, wt_store, own_origin, unique):
    own_origin.client().put_object(Bucket=ORIGIN_BUCKET, Key=f"{unique}/legacy", Body=b"legacy")
    proxy = Proxy.of(tmp_path / "proxy", wt_store, write_through_rules(tmp_path / "rules.json", own_origin.endpoint, AWAY)).start()
    bodies = {f"{unique}/k{number}": f"body {number}\n".encode() * (number + 1) for number in range(20)}
    try:
        own_origin.stop()
        sdk = proxy.client()
        for key, body in bodies.items():
            sdk.put_object(Bucket=AWAY, Key=key, Body=body)
        sdk.delete_object(Bucket=AWAY, Key=f"{unique}/legacy")
        # acknowledged and journaled; the origin's lane is paused and tried again, with backoff
        wait_for(lambda: proxy.metric("backorigin_writethrough_lag_seconds") > 3
                 and proxy.metric("backorigin_writethrough_retries_total", scope="lane") >= 2, within=60)
        assert proxy.metric("backorigin_writethrough_pending") == 21
        assert proxy.metric("backorigin_writethrough_keys_pending") == 21
        own_origin.start()
        proxy.wait_applied(within=120)
        for key, body in bodies.items():
            same_at_both(wt_store, own_origin, key, sha(body), AWAY)
        same_at_both(wt_store, own_origin, f"{unique}/legacy", None, AWAY)
        assert proxy.metric("backorigin_writethrough_lag_seconds") == 0
        assert proxy.metric("backorigin_writethrough_seconds_count") == 21
        assert proxy.metric("backorigin_writethrough_seconds_sum") > 21 * 3  # each waited out the outage
    finally:
        assert proxy.stop() == 0


@pytest.mark.parametrize("fsync", ["true", "false"])
def test_writes_acknowledged_before_kill_9_of_the_proxy_reach_the_origin(tmp_path, wt_store, own_origin, unique, fsync):
    """The origin is away, 12 clients write at once, and the proxy is killed the moment the last
    has its answer: its worker stops too, the journal holds every write (synced to the disk, or in
    the page cache), and the next proxy on that spool brings them all to the origin."""
    rules, spool = write_through_rules(tmp_path / "rules.json", own_origin.endpoint, AWAY), tmp_path / "spool"
    first = Proxy.of(tmp_path / "first", wt_store, rules, backorigin_spool_dir=str(spool), backorigin_writethrough_fsync=fsync).start()
    own_origin.stop()
    bodies = {f"{unique}/k{number}": f"kill {number}\n".encode() * (number + 1) for number in range(12)}
    sdk = first.client()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda item: sdk.put_object(Bucket=AWAY, Key=item[0], Body=item[1]), bodies.items()))
    worker = write_back_worker(first.pid, module="backorigin.writethrough.worker")
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    wait_for(lambda: not running(worker), within=10)  # its input ended: no orphan
    journaled = [change.key for entry in Journal(spool / "writethrough").entries() for change in entry.changes]
    assert sorted(journaled) == sorted(bodies)  # in fewer entries: writes answered together share one
    own_origin.start()
    second = Proxy.of(tmp_path / "second", wt_store, rules, backorigin_spool_dir=str(spool)).start()
    try:
        second.wait_applied(within=120)
        for key, body in bodies.items():
            same_at_both(wt_store, own_origin, key, sha(body), AWAY)
        assert "key(s) not yet at the origin" in second.log() and "(12 key(s) not yet at the origin)" in second.log()
    finally:
        assert second.stop() == 0
    assert list((spool / "writethrough").glob("*.json")) == []


def test_kill_9_of_the_worker_mid_backlog_loses_nothing(tmp_path, wt_store, origin, unique):
    """Uploads to the origin crawl (a relay passes requests at 2 MiB/s); the worker is killed once
    it has synced some keys and not others; the proxy starts another, which syncs the rest."""
    slow_origin = Relay(origin.s3_port, request_rate=2 * MiB)
    rules = write_through_rules(tmp_path / "rules.json", f"http://127.0.0.1:{slow_origin.port}", AWAY)
    proxy = Proxy.of(tmp_path / "proxy", wt_store, rules, backorigin_writethrough_workers="2").start()
    bodies = {f"{unique}/k{number}": hashlib.shake_256(f"{unique}{number}".encode()).digest(2 * MiB) for number in range(8)}
    try:
        sdk = proxy.client()
        for key, body in bodies.items():
            sdk.put_object(Bucket=AWAY, Key=key, Body=body)
        wait_for(lambda: proxy.metric("backorigin_writethrough_synced_total", action="put") >= 1, within=60)
        assert proxy.metric("backorigin_writethrough_pending") > 0  # mid-backlog
        first = write_back_worker(proxy.pid, module="backorigin.writethrough.worker")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "the write-through worker exited with status -9; starting another" in proxy.log())
        wait_for(lambda: (pid := write_back_worker(proxy.pid, module="backorigin.writethrough.worker")) != first and pid)
        proxy.wait_applied(within=120)
        for key, body in bodies.items():
            same_at_both(wt_store, origin, key, sha(body), AWAY)
    finally:
        assert proxy.stop() == 0
        slow_origin.close()
    assert list(proxy.journal.glob("*.json")) == []


def test_a_key_whose_delete_is_not_at_the_origin_yet_is_not_mirrored_back(tmp_path, wt_store, origin, unique):
    """Deletes resurrect (OSS's behaviour, no tombstones) and the origin is slow to hear of the
    delete (a relay holds each new connection 3 s): a GET meanwhile must not mirror the origin's
    stale copy back, which the worker would then copy back to the origin."""
    key = f"{unique}/deleted"
    origin.client().put_object(Bucket=ORIGIN_BUCKET, Key=key, Body=b"the origin's old copy")
    slow_origin = Relay(origin.s3_port, delay=3.0)
    rules = write_through_rules(tmp_path / "rules.json", f"http://127.0.0.1:{slow_origin.port}", AWAY)
    proxy = Proxy.of(tmp_path / "proxy", wt_store, rules, backorigin_deletes="resurrect").start()
    try:
        client = proxy.client()
        client.delete_object(Bucket=AWAY, Key=key)
        assert proxy.metric("backorigin_writethrough_pending") == 1
        with pytest.raises(ClientError) as missing:
            client.get_object(Bucket=AWAY, Key=key)
        assert missing.value.response["Error"]["Code"] == "NoSuchKey"
        proxy.wait_applied()
        with pytest.raises(ClientError):
            client.get_object(Bucket=AWAY, Key=key)  # the origin has none now either
        same_at_both(wt_store, origin, key, None, AWAY)
    finally:
        assert proxy.stop() == 0
        slow_origin.close()


# the rollback check ----------------------------------------------------------------------------


def test_verify_check_origin_reports_what_a_rollback_would_lose(tmp_path, wt_store, origin, wt_proxy, unique, monkeypatch):
    for name, value in STORE_ENV.items():  # verify reads the store with the proxy's credentials
        monkeypatch.setenv(name, value)
    sdk, old = wt_proxy.client(), origin.client()
    through, behind, legacy = f"{unique}/through", f"{unique}/behind-the-proxy", f"{unique}/not-migrated"
    sdk.put_object(Bucket=BUCKET, Key=through, Body=b"through the proxy")
    wt_store.client().put_object(Bucket=BUCKET, Key=behind, Body=b"straight to the store")  # the origin never hears of it
    old.put_object(Bucket=ORIGIN_BUCKET, Key=legacy, Body=b"only at the origin")
    wt_proxy.wait_applied()
    keys, report = tmp_path / "keys.txt", tmp_path / "report.json"
    keys.write_text(f"{through}\n{behind}\n{legacy}\n")
    command = ["verify", "--check", "origin", "--rules", wt_proxy.rules, "--store", wt_store.endpoint, "--bucket", BUCKET]
    ran = run_cli(*command, "--keys", keys, "--report", report)
    assert ran.returncode == 1, ran.stderr
    found = json.loads(report.read_text())
    assert {result: n for result, n in found["counts"].items() if n} == {"ok": 1, "missing": 1, "origin-only": 1}
    assert [(p["key"], p["result"]) for p in found["problems"]] == [(behind, "missing")]
    assert "missing at the origin" in ran.stdout
    # written through the proxy (a copy onto itself), it reaches the origin: a rollback is safe
    sdk.copy_object(Bucket=BUCKET, Key=behind, CopySource={"Bucket": BUCKET, "Key": behind}, MetadataDirective="REPLACE")
    wt_proxy.wait_applied()
    ran = run_cli(*command, "--store-listing")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # a bucket without WriteThrough: a delete through the proxy stays in the store (a tombstone)
    old.put_object(Bucket=ORIGIN_BUCKET, Key=f"{unique}/deleted", Body=b"deleted through the proxy")
    sdk.delete_object(Bucket=PLAIN, Key=f"{unique}/deleted")
    keys.write_text(f"{unique}/deleted\n")
    ran = run_cli("verify", "--check", "origin", "--rules", wt_proxy.rules, "--store", wt_store.endpoint, "--bucket", PLAIN,
                  "--keys", keys, "--tombstones", wt_proxy.spool / "tombstones")
    assert ran.returncode == 1 and "deleted through the proxy, still at the origin" in ran.stdout
