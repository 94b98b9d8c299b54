"""One rules entry for 1,000 buckets: "mig-*" mirrors every bucket from the bucket of the same name
on the old store (a second SeaweedFS with SigV4 on, reached through a relay that logs every
request), with one exact entry that wins over the pattern. What clients get (sha256 per bucket,
so no bucket's object is served for another), how often the origin is asked, and the sweep and
the merged listing on a bucket only the pattern names."""

from __future__ import annotations

import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.clients import Target, aws_cp_file, boto3_client
from tests.modes_support import ModeMitmdump
from tests.support import BACKORIGIN, MANY_BUCKETS, Relay, mirror_rule, running_store, stored, wait_for, write_rules

BUCKETS = [f"mig-{n:04d}" for n in range(1000)]
OVERRIDDEN = "mig-0007"  # its own entry: it mirrors from the old store's mig-0008
KEY = "data/object.bin"
STORE_KEYS = ("storekey", "storesecret")
ORIGIN_AUTH = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "oldkey", "AccessKeySecret": "oldsecret"}
STORE_ENV = {"AWS_ACCESS_KEY_ID": STORE_KEYS[0], "AWS_SECRET_ACCESS_KEY": STORE_KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}


def body_of(bucket: str) -> bytes:
    """Each bucket's object is its own (and its size differs), so a mix-up cannot pass."""
    number = int(bucket.split("-")[1])
    return f"the object of {bucket}\n".encode() * (number % 97 + 1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def old_store(tmp_path_factory):
    """The old store: the same 1,000 bucket names, each with its own object; SigV4 on."""
    keys = (ORIGIN_AUTH["AccessKeyId"], ORIGIN_AUTH["AccessKeySecret"])
    with running_store(tmp_path_factory.mktemp("old-store"), BUCKETS, keys, MANY_BUCKETS) as old:
        client = old.client()
        client.put_object(Bucket="mig-0042", Key="data/second.bin", Body=b"only the sweep copies this\n")
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda bucket: client.put_object(Bucket=bucket, Key=KEY, Body=body_of(bucket)), BUCKETS))
        yield old


@pytest.fixture(scope="module")
def relay(old_store):
    """The old store's access log: every request line the proxy (or the sweep) sends it."""
    relay = Relay(old_store.s3_port)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def new_store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("new-store"), [*BUCKETS, "other-bucket"], STORE_KEYS, MANY_BUCKETS) as new:
        yield new


@pytest.fixture(scope="module")
def rules(tmp_path_factory, relay):
    old = f"http://127.0.0.1:{relay.port}"
    return write_rules(tmp_path_factory.mktemp("pattern-rules") / "rules.json", {
        "mig-*": [mirror_rule(1, f"{old}/${{bucket}}/", MirrorAuth=ORIGIN_AUTH)],
        OVERRIDDEN: [mirror_rule(1, f"{old}/mig-0008/", MirrorAuth=ORIGIN_AUTH)],
    })


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, new_store, rules):
    proxy = ModeMitmdump(
        f"reverse:{new_store.endpoint}", rules, tmp_path_factory.mktemp("pattern-proxy"),
        {"keep_host_header": "true", "backorigin_merged_listing": "true", "backorigin_writeback_workers": "8",
         "backorigin_origin_timeout": "60"},
        env=STORE_ENV,
    ).start()
    yield proxy
    proxy.stop()


def expected(bucket: str) -> str:
    return sha(body_of("mig-0008" if bucket == OVERRIDDEN else bucket))


def origin_gets(relay: Relay) -> list[str]:
    return [line.split()[1] for line in relay.requests if line.startswith("GET ") and "?" not in line.split()[1]]


def read_all(proxy) -> dict[str, str]:
    """sha256 of what a boto3 client reads through the proxy, per bucket (10 at once)."""
    client = boto3_client(Target(proxy.url, *STORE_KEYS))

    def read(bucket: str) -> tuple[str, str]:
        return bucket, sha(client.get_object(Bucket=bucket, Key=KEY)["Body"].read())

    with ThreadPoolExecutor(10) as pool:
        return dict(pool.map(read, BUCKETS))


def test_one_pattern_entry_mirrors_1000_buckets_from_their_namesakes(proxy, relay, new_store, tmp_path):
    got = read_all(proxy)
    assert got == {bucket: expected(bucket) for bucket in BUCKETS}
    gets = origin_gets(relay)
    wanted = sorted(f"/{'mig-0008' if b == OVERRIDDEN else b}/{KEY}" for b in BUCKETS)
    assert sorted(gets) == wanted, "one origin GET per bucket, of its namesake (the exact entry's own for mig-0007)"

    s3 = new_store.client()
    wait_for(lambda: all(stored(s3, bucket, KEY) for bucket in BUCKETS), within=180, every=1.0)
    assert read_all(proxy) == got
    assert len(origin_gets(relay)) == len(BUCKETS), "the second reading is the store's: no origin request"

    done = aws_cp_file(Target(proxy.url, *STORE_KEYS), "mig-0500", KEY, tmp_path)
    assert done.returncode == 0 and done.sha256 == expected("mig-0500"), done.stderr
    assert len(origin_gets(relay)) == len(BUCKETS)


def test_a_bucket_no_entry_names_is_left_to_the_store(proxy, relay):
    before = len(relay.requests)
    client = boto3_client(Target(proxy.url, *STORE_KEYS))
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket="other-bucket", Key=KEY)
    assert len(relay.requests) == before


def test_merged_listing_of_a_pattern_bucket_shows_the_old_stores_keys(proxy):
    listed = boto3_client(Target(proxy.url, *STORE_KEYS)).list_objects_v2(Bucket="mig-0042", Prefix="data/")
    assert [entry["Key"] for entry in listed["Contents"]] == ["data/object.bin", "data/second.bin"]


def test_backfill_and_verify_of_a_bucket_only_the_pattern_names(rules, new_store, tmp_path):
    def sweep(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([BACKORIGIN, *args, "--rules", str(rules), "--store", new_store.endpoint, "--bucket", "mig-0042",
                               "--origin-listing"], env=STORE_ENV | {"PATH": "/usr/bin:/bin"}, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    copied = sweep("backfill", "--state", str(tmp_path / "state"))
    assert copied.returncode == 0, copied.stderr
    s3 = new_store.client()
    assert s3.get_object(Bucket="mig-0042", Key="data/second.bin")["Body"].read() == b"only the sweep copies this\n"
    checked = sweep("verify")
    assert checked.returncode == 0, checked.stderr
