"""The probe is the answer (issue 21): a GET or HEAD under a rule reaches the store once, cold or
warm. The store sits behind a relay that keeps its access log; the proxy asks the store ahead of
mitmproxy, and unless the answer is a miss a rule mirrors, that answer goes to the client as the
store gave it: body, status and headers, for a hit, a 304, a 206, a 412, a NoSuchBucket 404."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import closing

import pytest
from botocore.exceptions import ClientError

from backorigin.limits import PROBE_ANSWER_LIMIT
from tests.clients import Target, boto3_client
from tests.support import Mitmdump, Relay, http_get, mirror_rule, write_rules

BUCKET = "probe-bucket"


@pytest.fixture(scope="module")
def logged(tmp_path_factory, store, origin) -> Iterator[tuple[Mitmdump, Relay]]:
    """The proxy in front of a relay that logs every request that reaches the store."""
    store.create_buckets([BUCKET])
    relay = Relay(int(store.endpoint.rsplit(":", 1)[1]))
    workdir = tmp_path_factory.mktemp("probe")
    rules = write_rules(workdir / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")],
                                                  "no-such-bucket": [mirror_rule(1, f"{origin.base}/dir1/")]})
    proxy = Mitmdump(f"reverse:http://127.0.0.1:{relay.port}", rules, workdir).start()
    yield proxy, relay
    proxy.stop()
    relay.close()


def _requests_for(relay: Relay, key: str) -> list[str]:
    return [line.split(" ")[0] for line in relay.requests if f"/{key}" in line.split(" ")[1]]


def _stored(s3, key: str, size: int) -> bytes:
    body = os.urandom(size)
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return body


def test_cold_gets_and_heads_of_stored_objects_reach_the_store_once(logged, s3, unique):
    proxy, relay = logged
    bodies = {f"cold/{unique}/{i}": _stored(s3, f"cold/{unique}/{i}", 4096 + i) for i in range(10)}
    with closing(boto3_client(Target(proxy.url, "k", "s"))) as client:
        for key, body in bodies.items():
            got = client.get_object(Bucket=BUCKET, Key=key)
            assert hashlib.sha256(got["Body"].read()).hexdigest() == hashlib.sha256(body).hexdigest()
            assert got["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        heads = {f"head/{unique}/{i}": _stored(s3, f"head/{unique}/{i}", 100) for i in range(10)}
        for key in heads:
            assert client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == 100
    for key in bodies:
        assert _requests_for(relay, key) == ["GET"], key
    for key in heads:
        assert _requests_for(relay, key) == ["HEAD"], key


def test_conditional_ranged_and_error_answers_are_the_stores_own(logged, s3, unique):
    proxy, relay = logged
    key = f"cond/{unique}"
    body = _stored(s3, key, 10_000)
    etag = f'"{hashlib.md5(body).hexdigest()}"'
    with closing(boto3_client(Target(proxy.url, "k", "s"))) as client:
        ranged = client.get_object(Bucket=BUCKET, Key=key, Range="bytes=100-199")
        assert ranged["ContentRange"] == "bytes 100-199/10000" and ranged["Body"].read() == body[100:200]
        for condition, status in (({"IfNoneMatch": etag}, 304), ({"IfMatch": '"other"'}, 412)):
            with pytest.raises(ClientError) as caught:
                client.get_object(Bucket=BUCKET, Key=key, **condition)
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        with pytest.raises(ClientError) as caught:
            client.get_object(Bucket="no-such-bucket", Key=key)
        assert caught.value.response["Error"]["Code"] == "NoSuchBucket"
    assert _requests_for(relay, key) == ["GET"] * 4  # the 404 NoSuchBucket too: below


def test_a_body_over_the_limit_is_asked_again_and_streamed_whole(logged, s3, unique):
    """Measured choice (BENCHMARKS.md): past PROBE_ANSWER_LIMIT mitmproxy asks again and streams."""
    proxy, relay = logged
    key = f"large/{unique}"
    body = _stored(s3, key, PROBE_ANSWER_LIMIT + 12_345)
    with closing(boto3_client(Target(proxy.url, "k", "s"))) as client:
        assert hashlib.sha256(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).digest() == hashlib.sha256(body).digest()
        assert hashlib.sha256(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).digest() == hashlib.sha256(body).digest()
    assert _requests_for(relay, key) == ["GET", "GET", "GET"]  # cold: the probe, then mitmproxy; warm: mitmproxy only


def test_a_key_with_dot_segments_is_asked_about_as_it_is(logged, store, s3, unique):
    """The probe's path goes to the store byte for byte: httpx removed "." and ".." segments even
    from a raw path, so the store was asked about another key, and its answer, now the client's,
    could be another object's bytes."""
    proxy, relay = logged
    s3.put_object(Bucket=BUCKET, Key=f"dots/{unique}/d", Body=b"another object")
    dotted = f"/{BUCKET}/dots/{unique}/./c/../d"
    direct = http_get(f"{store.endpoint}{dotted}")  # SeaweedFS: 400 InvalidRequest, naming the key it was asked about
    through = http_get(f"{proxy.url}{dotted}")
    assert through[0] == direct[0] and b"another object" not in through[2]
    assert f"<Key>dots/{unique}/./c/../d</Key>".encode() in through[2]
    assert [line.split(" ")[:2] for line in relay.requests if f"/dots/{unique}/" in line][0] == ["GET", dotted]
