"""Deletes that stick: a DeleteObject or DeleteObjects through the proxy leaves a
tombstone, so the key is never mirrored again, whatever the order of the delete, the origin
fetch and the write-back; a PUT clears it; tombstones survive restarts and can be shared by
several proxies through the store. Real mitmdump, real SeaweedFS, the scripted origin."""

from __future__ import annotations

import concurrent.futures
import json
import time

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config

from tests.origin_server import body_for
from tests.support import Mitmdump, Relay, http_get, mirror_rule, stored, wait_for, wait_stored, write_rules

BUCKET = "tombstone-bucket"
SHARED = "tombstones-shared"
VERSIONED = "tombstone-versioned"


@pytest.fixture(scope="module")
def tomb_rules(tmp_path_factory, store, origin):
    store.create_buckets([BUCKET, SHARED, VERSIONED])
    store.client().put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    rule = mirror_rule(1, f"{origin.base}/dir1/")
    return write_rules(tmp_path_factory.mktemp("tomb") / "rules.json", {BUCKET: [rule], VERSIONED: [rule]})


def proxy_for(workdir, store, rules, **options) -> Mitmdump:
    return Mitmdump(f"reverse:{store.endpoint}", rules, workdir, {"backorigin_origin_timeout": "10", **options})


@pytest.fixture(scope="module")
def tomb_proxy(tmp_path_factory, store, tomb_rules):
    proxy = proxy_for(tmp_path_factory.mktemp("tomb-proxy"), store, tomb_rules).start()
    yield proxy
    proxy.stop()


def client_through(proxy: Mitmdump):
    return boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))


def gets_404_without_the_origin(proxy: Mitmdump, origin, key: str, unique: str, bucket: str = BUCKET) -> None:
    before = origin.count("GET", unique)
    for _ in range(2):
        status, _, body = http_get(f"{proxy.url}/{bucket}/{key}")
        assert status == 404 and b"<Code>NoSuchKey</Code>" in body
        assert requests.head(f"{proxy.url}/{bucket}/{key}").status_code == 404
    assert origin.count("GET", unique) == before


def test_delete_of_a_key_not_migrated_yet_sticks(tomb_proxy, origin, unique):
    key = f"ok/{unique}"
    assert requests.delete(f"{tomb_proxy.url}/{BUCKET}/{key}").status_code == 204
    gets_404_without_the_origin(tomb_proxy, origin, key, unique)
    assert f"tombstone(s) for s3://{BUCKET}/{key}" in tomb_proxy.log()


def test_delete_of_a_mirrored_key_sticks(tomb_proxy, origin, s3, unique):
    key = f"ok/{unique}"
    assert http_get(f"{tomb_proxy.url}/{BUCKET}/{key}")[2] == body_for(f"/dir1/{key}")
    wait_stored(s3, BUCKET, key)
    assert requests.delete(f"{tomb_proxy.url}/{BUCKET}/{key}").status_code == 204
    assert stored(s3, BUCKET, key) is None
    gets_404_without_the_origin(tomb_proxy, origin, key, unique)
    assert origin.count("GET", unique) == 1


def test_put_clears_the_tombstone_and_a_delete_on_the_store_itself_resurrects(tomb_proxy, origin, s3, unique):
    key = f"ok/{unique}"
    requests.delete(f"{tomb_proxy.url}/{BUCKET}/{key}")
    assert requests.put(f"{tomb_proxy.url}/{BUCKET}/{key}", data=b"new data").status_code == 200
    assert http_get(f"{tomb_proxy.url}/{BUCKET}/{key}")[2] == b"new data"
    s3.delete_object(Bucket=BUCKET, Key=key)  # not through the proxy: no tombstone (README)
    assert http_get(f"{tomb_proxy.url}/{BUCKET}/{key}")[2] == body_for(f"/dir1/{key}")
    assert origin.count("GET", unique) == 1


def test_delete_objects_leaves_a_tombstone_for_each_key_it_deleted(tomb_proxy, origin, unique):
    keys = [f"ok/{unique}-{i}" for i in range(3)]
    client = client_through(tomb_proxy)
    for quiet in (False, True):  # quiet: the answer lists only the errors
        answer = client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": quiet})
        assert not answer.get("Errors")
    for key in keys:
        gets_404_without_the_origin(tomb_proxy, origin, key, unique)


def test_delete_objects_larger_than_stream_large_bodies_leaves_its_tombstones(tomb_proxy, origin, unique):
    """1,000 keys of about 1,000 bytes: a 1.1 MiB body, which mitmproxy streams (stream_large_bodies 1m)."""
    keys = [f"ok/{unique}-{i:04d}-" + "k" * 960 for i in range(1000)]
    answer = client_through(tomb_proxy).delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
    assert not answer.get("Errors") and len(answer["Deleted"]) == 1000
    for key in (keys[0], keys[500], keys[-1]):
        gets_404_without_the_origin(tomb_proxy, origin, key, unique)


def versions_of(s3, key: str, kind: str = "Versions") -> list[str]:
    """The key's version ids (or its delete markers')."""
    return [v["VersionId"] for v in s3.list_object_versions(Bucket=VERSIONED, Prefix=key).get(kind, []) if v["Key"] == key]


def mirrored_into_versioned(proxy: Mitmdump, s3, key: str) -> str:
    """The key mirrored and written back: its one version's id."""
    assert http_get(f"{proxy.url}/{VERSIONED}/{key}")[2] == body_for(f"/dir1/{key}")
    wait_stored(s3, VERSIONED, key)
    (version,) = versions_of(s3, key)
    return version


def test_deleting_the_only_version_sticks(tomb_proxy, origin, s3, unique):
    key = f"ok/{unique}"
    version = mirrored_into_versioned(tomb_proxy, s3, key)
    assert requests.delete(f"{tomb_proxy.url}/{VERSIONED}/{key}?versionId={version}").status_code == 204
    assert versions_of(s3, key) == [] == versions_of(s3, key, "DeleteMarkers")
    gets_404_without_the_origin(tomb_proxy, origin, key, unique, VERSIONED)
    assert origin.count("GET", unique) == 1
    assert f"tombstone(s) for s3://{VERSIONED}/{key}" in tomb_proxy.log()


def test_deleting_an_older_version_leaves_no_tombstone(tomb_proxy, origin, s3, unique):
    key = f"ok/{unique}"
    older = mirrored_into_versioned(tomb_proxy, s3, key)
    assert requests.put(f"{tomb_proxy.url}/{VERSIONED}/{key}", data=b"second").status_code == 200
    assert requests.delete(f"{tomb_proxy.url}/{VERSIONED}/{key}?versionId={older}").status_code == 204
    assert http_get(f"{tomb_proxy.url}/{VERSIONED}/{key}")[2] == b"second"
    assert f"tombstone(s) for s3://{VERSIONED}/{key}" not in tomb_proxy.log()


def test_removing_a_delete_marker_brings_the_key_back_and_clears_its_tombstone(tomb_proxy, origin, s3, unique):
    key = f"ok/{unique}"
    mirrored_into_versioned(tomb_proxy, s3, key)
    assert requests.delete(f"{tomb_proxy.url}/{VERSIONED}/{key}").status_code == 204  # a delete marker: a tombstone
    gets_404_without_the_origin(tomb_proxy, origin, key, unique, VERSIONED)
    (marker,) = versions_of(s3, key, "DeleteMarkers")
    assert requests.delete(f"{tomb_proxy.url}/{VERSIONED}/{key}?versionId={marker}").status_code == 204
    assert http_get(f"{tomb_proxy.url}/{VERSIONED}/{key}")[2] == body_for(f"/dir1/{key}")  # the store's copy
    assert f"tombstone of s3://{VERSIONED}/{key} cleared" in tomb_proxy.log()
    assert origin.count("GET", unique) == 1


def test_delete_objects_with_version_ids(tomb_proxy, origin, s3, unique):
    gone, kept = f"ok/{unique}-gone", f"ok/{unique}-kept"
    only = mirrored_into_versioned(tomb_proxy, s3, gone)
    older = mirrored_into_versioned(tomb_proxy, s3, kept)
    assert requests.put(f"{tomb_proxy.url}/{VERSIONED}/{kept}", data=b"second").status_code == 200
    answer = client_through(tomb_proxy).delete_objects(Bucket=VERSIONED, Delete={"Objects": [
        {"Key": gone, "VersionId": only}, {"Key": kept, "VersionId": older}]})
    assert not answer.get("Errors")
    gets_404_without_the_origin(tomb_proxy, origin, gone, unique, VERSIONED)
    assert http_get(f"{tomb_proxy.url}/{VERSIONED}/{kept}")[2] == b"second"
    assert f"s3://{VERSIONED}/{kept}" not in tomb_proxy.log().split("tombstone(s) for")[-1]
    assert origin.count("GET", unique) == 2


def test_a_key_no_mirror_rule_covers_gets_no_tombstone(tomb_proxy, tmp_path):
    assert requests.delete(f"{tomb_proxy.url}/plain-bucket/x").status_code == 204
    assert "tombstone(s) for s3://plain-bucket" not in tomb_proxy.log()


# the races: the delete must win whatever the order -------------------------------------------


def test_delete_while_the_origin_fetch_is_under_way(tomb_proxy, origin, s3, unique):
    key = f"gate/{unique}"
    origin.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(http_get, f"{tomb_proxy.url}/{BUCKET}/{key}")
        wait_for(lambda: origin.count("GET", unique))
        assert requests.delete(f"{tomb_proxy.url}/{BUCKET}/{key}").status_code == 204
        origin.gate.set()
        status, _, body = reading.result(timeout=30)
    assert status == 200 and body == body_for(f"/dir1/{key}")  # it asked before the delete
    wait_for(lambda: "deleted through the proxy meanwhile" in tomb_proxy.log())
    assert stored(s3, BUCKET, key) is None
    gets_404_without_the_origin(tomb_proxy, origin, key, unique)


def test_delete_while_the_write_back_is_queued_or_uploading(tmp_path, store, s3, origin, tomb_rules, unique):
    """One upload worker behind a store link that holds each connection 2 s: the first key's
    upload is under way (the delete is answered at once, and removes it again once it landed), the
    second's is queued (it is withdrawn and never sent)."""
    relay = Relay(store.s3_port, delay=2.0)
    proxy = proxy_for(tmp_path, store, tomb_rules, backorigin_s3_endpoint=f"http://127.0.0.1:{relay.port}",
                      backorigin_writeback_workers="1").start()
    uploading, queued = f"ok/{unique}-uploading", f"ok/{unique}-queued"
    try:
        for key in (uploading, queued):
            assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200
        wait_for(lambda: relay.accepted, within=30)  # the first upload is on its way, held at the link
        for key in (queued, uploading):  # the queued one first, while the worker is busy with the other
            started = time.monotonic()
            assert requests.delete(f"{proxy.url}/{BUCKET}/{key}", timeout=60).status_code == 204
            assert time.monotonic() - started < 1.5, "a delete never waits for an upload"
        landed = (f"write-back of s3://{BUCKET}/{uploading} dropped and the copy it had stored removed",  # by the worker
                  f"s3://{BUCKET}/{uploading} was written back while its delete was on its way: deleting it again")
        wait_for(lambda: any(line in proxy.log() for line in landed), within=30)
        wait_for(lambda: stored(s3, BUCKET, uploading) is None and stored(s3, BUCKET, queued) is None, within=30)
        for key in (uploading, queued):
            gets_404_without_the_origin(proxy, origin, key, unique)
        # the upload under way landed after the delete and was removed again; the queued one never went
        assert f"write-back stored s3://{BUCKET}/{queued} " not in proxy.log()
    finally:
        proxy.stop()
        relay.close()
    assert stored(s3, BUCKET, uploading) is None and stored(s3, BUCKET, queued) is None
    assert list(proxy.spool.glob("*.json")) == []


# where tombstones live -----------------------------------------------------------------------


def test_tombstones_survive_a_restart(tmp_path, store, origin, tomb_rules, unique):
    spool = tmp_path / "spool"
    first = proxy_for(tmp_path / "first", store, tomb_rules, backorigin_spool_dir=str(spool)).start()
    key = f"ok/{unique}"
    try:
        assert requests.delete(f"{first.url}/{BUCKET}/{key}").status_code == 204
    finally:
        first.stop()
    second = proxy_for(tmp_path / "second", store, tomb_rules, backorigin_spool_dir=str(spool)).start()
    try:
        gets_404_without_the_origin(second, origin, key, unique)
    finally:
        second.stop()
    assert [json.loads(line)["key"] for line in (spool / "tombstones" / "journal").read_text().splitlines()] == [key]


def test_two_proxies_share_tombstones_through_the_store(tmp_path, store, s3, origin, tomb_rules, unique):
    shared = {"backorigin_tombstones": f"s3://{SHARED}/{unique}/"}
    one, two = (proxy_for(tmp_path / name, store, tomb_rules, **shared).start() for name in ("one", "two"))
    key = f"ok/{unique}"
    try:
        assert requests.delete(f"{one.url}/{BUCKET}/{key}").status_code == 204
        gets_404_without_the_origin(two, origin, key, unique)
        assert stored(s3, SHARED, f"{unique}/{BUCKET}/{key}") is not None  # the tombstone, in the store
        assert requests.put(f"{two.url}/{BUCKET}/{key}", data=b"again").status_code == 200  # clears it for both
        assert stored(s3, SHARED, f"{unique}/{BUCKET}/{key}") is None
        s3.delete_object(Bucket=BUCKET, Key=key)
        assert http_get(f"{one.url}/{BUCKET}/{key}")[2] == body_for(f"/dir1/{key}")
    finally:
        one.stop()
        two.stop()


def test_another_proxys_write_back_that_lands_before_the_shared_tombstone_is_deleted_again(tmp_path, store, s3, tomb_rules,
                                                                                          unique):
    """Shared tombstones are written once the store has deleted. In between, another proxy can miss
    the key, find no tombstone and write it back (an attacker saw 7 of 1,000 keys of a DeleteObjects
    come back for good). The deleting proxy looks once its tombstones are written and removes such
    a write-back (it names its origin URL); an object a client wrote meanwhile is left alone."""
    slow = Relay(store.s3_port, delay=2.0)  # the proxy's own requests (its tombstones) take 2 s
    proxy = proxy_for(tmp_path, store, tomb_rules, backorigin_tombstones=f"s3://{SHARED}/{unique}/",
                      backorigin_s3_endpoint=f"http://127.0.0.1:{slow.port}").start()
    written_back, clients = f"ok/{unique}-written-back", f"ok/{unique}-clients"
    objects = {"Objects": [{"Key": key} for key in (written_back, clients)]}
    try:
        for key in (written_back, clients):
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"before")
        signed = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1", aws_access_key_id="any",
                              aws_secret_access_key="any")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            deleting = pool.submit(signed.delete_objects, Bucket=BUCKET, Delete=objects)
            wait_for(lambda: stored(s3, BUCKET, written_back) is None and stored(s3, BUCKET, clients) is None, within=30)
            assert not deleting.done()  # the store has deleted; the tombstones are on their way
            s3.put_object(Bucket=BUCKET, Key=written_back, Body=b"from the origin",
                          Metadata={"backorigin-origin-url": f"http://origin.test/{written_back}"})
            s3.put_object(Bucket=BUCKET, Key=clients, Body=b"a client's")
            assert len(deleting.result(timeout=60)["Deleted"]) == 2
        wait_for(lambda: "written back by another proxy while its delete was on its way" in proxy.log(), within=30)
        assert stored(s3, BUCKET, written_back) is None
        assert s3.get_object(Bucket=BUCKET, Key=clients)["Body"].read() == b"a client's"
    finally:
        proxy.stop()
        slow.close()


def test_oss_behaviour_on_request_resurrects(tmp_path, store, origin, tomb_rules, unique):
    proxy = proxy_for(tmp_path, store, tomb_rules, backorigin_deletes="resurrect").start()
    key = f"ok/{unique}"
    try:
        assert requests.delete(f"{proxy.url}/{BUCKET}/{key}").status_code == 204
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[2] == body_for(f"/dir1/{key}")
    finally:
        proxy.stop()
