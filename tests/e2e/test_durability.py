"""Holding up: large objects, integrity, origin faults, store outages, kill -9, loops,
two proxies on one store. Real mitmdump, real SeaweedFS, scripted origin."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import signal

import pytest

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.clients import sized_sha256, stored_sha256
from tests.origin_server import body_for, sized_body
from tests.support import (
    Mitmdump,
    Relay,
    http_get,
    mirror_rule,
    stored,
    wait_for,
    wait_stored,
    write_rules,
)

BUCKET = "durable-bucket"


@pytest.fixture(scope="module")
def durable_rules(tmp_path_factory, store, origin):
    store.create_buckets([BUCKET])
    return write_rules(tmp_path_factory.mktemp("durable") / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")]})


def proxy_for(tmp_path, endpoint: str, rules, **options) -> Mitmdump:
    return Mitmdump(f"reverse:{endpoint}", rules, tmp_path, {"backorigin_origin_timeout": "1.5", **options})


# Large objects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".bin", ".chunked"])
def test_large_object_streams_through_the_spool_and_is_stored_once(tmp_path, store, s3, origin, durable_rules, unique, suffix):
    size = 40 * 1024 * 1024 + 12345  # over max_inline, and three multipart parts
    proxy = proxy_for(tmp_path, store.endpoint, durable_rules, backorigin_max_inline="8m", backorigin_origin_timeout="30").start()
    key = f"sized/{size}/{unique}{suffix}"
    try:
        status, headers, body = http_get(f"{proxy.url}/{BUCKET}/{key}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == sized_sha256(size)
        assert headers["x-oss-tag"] == f"MIRROR {origin.base}/dir1/{key}"
        head = wait_stored(s3, BUCKET, key, within=60)
        assert head["ContentLength"] == size
        assert stored_sha256(s3, BUCKET, key) == sized_sha256(size)
        assert head["Metadata"]["backorigin-origin-url"] == f"{origin.base}/dir1/{key}"
        if suffix == ".chunked":  # a body of unknown length is answered whole, with the ETag it will have
            assert headers["etag"] == head["ETag"]
        else:  # a known length over max_inline streams before the ETag is known
            assert "etag" not in headers
    finally:
        proxy.stop()
    assert len(origin.requests_for(unique)) == 1
    assert proxy.log().count(f"write-back stored s3://{BUCKET}/{key} ") == 1


def test_sdk_client_gets_a_large_miss_and_its_range(tmp_path, store, s3, origin, durable_rules, unique):
    """An SDK client follows no redirect: a large miss is streamed to it, and a ranged GET of
    a large miss gets exactly its range (206), while the whole object is stored once."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    proxy = proxy_for(tmp_path, store.endpoint, durable_rules, backorigin_max_inline="8m", backorigin_origin_timeout="30").start()
    size = 40 * 1024 * 1024 + 7
    whole, ranged = f"sized/{size}/{unique}.bin", f"sized/{size}/{unique}-range.bin"
    client = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                          config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
    try:
        answer = client.get_object(Bucket=BUCKET, Key=whole)
        digest = hashlib.sha256()
        for chunk in answer["Body"].iter_chunks(1024 * 1024):
            digest.update(chunk)
        assert digest.hexdigest() == sized_sha256(size)
        part = client.get_object(Bucket=BUCKET, Key=ranged, Range="bytes=30000000-30000099")
        assert part["ContentRange"] == f"bytes 30000000-30000099/{size}"
        expected = b"".join(sized_body(size))[30000000:30000100]
        assert part["Body"].read() == expected
        for key in (whole, ranged):
            assert wait_stored(s3, BUCKET, key, within=60)["ContentLength"] == size
            assert stored_sha256(s3, BUCKET, key) == sized_sha256(size)
    finally:
        proxy.stop()
    assert len(origin.requests_for(f"{unique}.bin")) == 1 and len(origin.requests_for(f"{unique}-range.bin")) == 1


def test_a_large_body_that_breaks_off_resets_the_client_and_is_never_stored(tmp_path, store, s3, durable_rules, unique):
    """Streamed answers cannot turn into a 424 once their headers are out: the connection is
    reset, so no client can take the short body for a whole one."""
    proxy = proxy_for(tmp_path, store.endpoint, durable_rules, backorigin_max_inline="1m").start()
    key = f"shortsized/{4 * 1024 * 1024}/{unique}"
    try:
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            http_get(f"{proxy.url}/{BUCKET}/{key}")
    finally:
        assert proxy.stop() == 0
    assert stored(s3, BUCKET, key) is None


def test_existing_objects_are_left_to_the_store(tmp_path, store, s3, origin, durable_rules, unique):
    proxy = proxy_for(tmp_path, store.endpoint, durable_rules).start()
    s3.put_object(Bucket=BUCKET, Key=f"ok/{unique}", Body=b"migrated")
    try:
        for _ in range(2):  # the second time the proxy remembers the key exists
            assert http_get(f"{proxy.url}/{BUCKET}/ok/{unique}")[2] == b"migrated"
    finally:
        proxy.stop()
    assert origin.requests_for(unique) == []


# Integrity and origin faults -------------------------------------------------------------------


FAULTS = ["hugeheaders", "badlength", "gziplie", "gziptruncated", "drip", "ftpredirect", "short", "reset", "loop", "error500"]


def test_origin_faults_give_424_and_store_nothing(tmp_path, store, s3, durable_rules, unique):
    # every fault is a failure of one origin host: the breaker would open after five of them
    proxy = proxy_for(tmp_path, store.endpoint, durable_rules, backorigin_breaker_failures="0").start()
    answers = {}
    try:
        for fault in FAULTS:
            status, _, body = http_get(f"{proxy.url}/{BUCKET}/{fault}/{unique}")
            answers[fault] = (status, b"<Code>MirrorFailed</Code>" in body)
        control = f"ok/{unique}"
        assert http_get(f"{proxy.url}/{BUCKET}/{control}")[0] == 200
    finally:
        assert proxy.stop() == 0  # drains every write-back that was started
    assert answers == {fault: (424, True) for fault in FAULTS}
    assert stored(s3, BUCKET, control)
    assert [f for f in FAULTS if stored(s3, BUCKET, f"{f}/{unique}")] == []


def test_md5_etag_mismatch_is_served_but_never_stored(tmp_path, store, s3, durable_rules, unique):
    proxy = proxy_for(tmp_path, store.endpoint, durable_rules).start()
    try:
        bad, good = f"badetag/{unique}", f"goodetag/{unique}"
        assert http_get(f"{proxy.url}/{BUCKET}/{bad}")[2] == body_for(f"/dir1/{bad}")
        assert http_get(f"{proxy.url}/{BUCKET}/{good}")[0] == 200
    finally:
        proxy.stop()
    assert stored(s3, BUCKET, good) and stored(s3, BUCKET, bad) is None
    assert f"not stored: s3://{BUCKET}/{bad}: ETag" in proxy.log()


# Durable write-back ------------------------------------------------------------------------------


@pytest.fixture
def own_store(tmp_path):
    """A store of its own, so a test may stop and restart it."""
    own = EmbeddedStore(tmp_path / "own-store", free_ports(1, with_grpc=True)[0])
    own.start()
    own.create_buckets([BUCKET])
    yield own
    own.stop()


def test_write_backs_survive_a_store_outage(tmp_path, own_store, durable_rules, unique):
    # the write-back endpoint sits behind a relay that holds each connection 1 s, so the
    # store can be stopped while uploads are pending
    relay = Relay(own_store.s3_port, delay=1.0)
    proxy = proxy_for(tmp_path, own_store.endpoint, durable_rules,
                      backorigin_s3_endpoint=f"http://127.0.0.1:{relay.port}").start()
    keys = [f"ok/{unique}-{i}" for i in range(3)]
    try:
        for key in keys:
            assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200
        own_store.stop()
        wait_for(lambda: "; retrying in" in proxy.log(), within=30)  # uploads failed against the stopped store
        own_store.start()
        client = own_store.client()
        for key in keys:
            wait_for(lambda key=key: stored(client, BUCKET, key), within=90, every=0.5)
    finally:
        proxy.stop()
        relay.close()


@pytest.mark.parametrize("fsync", ["false", "true"])
def test_write_backs_survive_kill_9_of_the_proxy(tmp_path, store, s3, durable_rules, unique, fsync):
    """More misses than upload workers, the store unreachable for uploads, and kill -9 the
    moment the last client has its answer: every answered object is spooled and lands
    (with the page cache by default, and with backorigin_spool_fsync)."""
    spool = tmp_path / "spool"
    stuck_store = Relay(store.s3_port, delay=600)  # uploads never get through
    first = proxy_for(tmp_path / "first", store.endpoint, durable_rules, backorigin_spool_dir=str(spool),
                      backorigin_s3_endpoint=f"http://127.0.0.1:{stuck_store.port}", backorigin_writeback_workers="1",
                      backorigin_spool_fsync=fsync).start()
    keys = [f"ok/{unique}-{i}" for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda key: http_get(f"{first.url}/{BUCKET}/{key}"), keys))
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    stuck_store.close()
    assert not any(stored(s3, BUCKET, key) for key in keys)
    second = proxy_for(tmp_path / "second", store.endpoint, durable_rules, backorigin_spool_dir=str(spool),
                       backorigin_s3_endpoint=store.endpoint).start()
    assert [a[2] for a in answers] == [body_for(f"/dir1/{key}") for key in keys]
    try:
        for key in keys:
            wait_stored(s3, BUCKET, key)
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_for(f"/dir1/{key}")
        assert "resuming 6 spooled write-back(s)" in second.log()
    finally:
        second.stop()
    assert list(spool.glob("*.json")) == []


# Concurrency and loops -----------------------------------------------------------------------


def test_two_proxies_on_one_store_end_with_one_correct_object_per_key(tmp_path, store, s3, origin, durable_rules, unique):
    proxies = [proxy_for(tmp_path / f"p{i}", store.endpoint, durable_rules).start() for i in range(2)]
    keys = [f"ok/{unique}-{i}" for i in range(10)]
    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda job: http_get(f"{job[0].url}/{BUCKET}/{job[1]}"),
                                    [(p, k) for k in keys for p in proxies]))
        assert {status for status, _, _ in answers} == {200}
    finally:
        for proxy in proxies:
            assert proxy.stop() == 0
    for key in keys:
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_for(f"/dir1/{key}")
    logs = proxies[0].log() + proxies[1].log()
    for key in keys:  # create-only: whichever proxy came second found it there
        assert logs.count(f"write-back stored s3://{BUCKET}/{key} ") == 1


def test_origin_that_leads_back_into_the_proxy_is_refused(tmp_path, store, s3, unique):
    port = free_ports(1)[0]
    rules = write_rules(tmp_path / "loop.json", {BUCKET: [mirror_rule(1, f"http://127.0.0.1:{port}/{BUCKET}/")]})
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path, port=port).start()
    try:
        status, _, body = http_get(f"{proxy.url}/{BUCKET}/{unique}")
    finally:
        proxy.stop()
    assert status == 424 and b"MirrorFailed" in body
    # the proxy's own listener is never fetched from (issue 25): refused before the loop marker is needed
    assert "is one of the proxy's own listeners" in proxy.log() and "came back into the proxy" not in proxy.log()
    assert stored(s3, BUCKET, unique) is None
