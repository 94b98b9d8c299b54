"""Write-through with a pattern entry: one "tenant-*" entry with "WriteThrough": true and
MirrorURL http://OLD/${bucket}/ writes every bucket it covers through to the bucket of the same
name at the origin (a second SeaweedFS with SigV4 identities of its own), with the origin's
MirrorAuth, which the worker gets for the pattern's endpoint. PUT (one part and multipart),
DeleteObject and DeleteObjects through the proxy, by the AWS CLI and boto3: each bucket's keys land
in its own namesake with the store's bytes (sha256), in no other; `backorigin verify --check
origin` of a bucket only the pattern names says a rollback is safe."""

from __future__ import annotations

import hashlib
import json

import pytest
from boto3.s3.transfer import TransferConfig

from tests.support import run_cli, running_store
from tests.writethrough_support import AUTH, ORIGIN_KEYS, STORE_ENV, STORE_KEYS, Proxy, aws, sha, sha256_of

BUCKETS = ["tenant-a", "tenant-b", "tenant-c"]
MiB = 1 << 20


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """The old store: the same bucket names, one object only it has (not migrated yet) in each."""
    with running_store(tmp_path_factory.mktemp("wtp-origin"), BUCKETS, ORIGIN_KEYS) as old:
        for bucket in BUCKETS:
            old.client().put_object(Bucket=bucket, Key="legacy/one", Body=f"legacy of {bucket}".encode())
            old.client().put_object(Bucket=bucket, Key="legacy/two", Body=f"legacy two of {bucket}".encode())
        yield old


@pytest.fixture(scope="module")
def new_store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("wtp-store"), [*BUCKETS, "other"], STORE_KEYS) as store:
        yield store


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, new_store, origin):
    workdir = tmp_path_factory.mktemp("wtp-proxy")
    rule = {"RuleNumber": 1, "Condition": {"HttpErrorCodeReturnedEquals": 404},
            "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"{origin.endpoint}/${{bucket}}/", "MirrorAuth": AUTH}}
    rules = workdir / "rules.json"
    rules.write_text(json.dumps({"Buckets": [{"Name": "tenant-*", "WriteThrough": True, "RoutingRules": [rule]}]}))
    proxy = Proxy.of(workdir, new_store, rules).start()
    yield proxy
    proxy.stop()


def body_of(bucket: str, name: str, size: int) -> bytes:
    """Bytes of their own for each bucket and key, so that no mix-up can pass."""
    return hashlib.shake_256(f"{bucket}/{name}".encode()).digest(size)


def test_a_pattern_entry_writes_every_bucket_through_to_its_namesake(tmp_path, proxy, new_store, origin, unique):
    sdk = proxy.client()
    expected: dict[tuple[str, str], str | None] = {}
    for size, bucket in zip((1234, 20 * MiB + 3, 77), BUCKETS, strict=True):
        put, cli, multipart = f"{unique}/put", f"{unique}/cli", f"{unique}/multipart"
        sdk.put_object(Bucket=bucket, Key=put, Body=body_of(bucket, put, size), Metadata={"tenant": bucket})
        source = tmp_path / bucket
        source.write_bytes(body_of(bucket, cli, size + 1))
        aws(proxy, tmp_path, "cp", str(source), f"s3://{bucket}/{cli}")
        big = tmp_path / f"{bucket}-big"
        big.write_bytes(body_of(bucket, multipart, 17 * MiB))
        sdk.upload_file(str(big), bucket, multipart, Config=TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB))
        expected |= {(bucket, put): sha(body_of(bucket, put, size)), (bucket, cli): sha(body_of(bucket, cli, size + 1)),
                     (bucket, multipart): sha(body_of(bucket, multipart, 17 * MiB))}
    # deletes: one the store had (written above), one only the origin had, and a DeleteObjects of both kinds
    aws(proxy, tmp_path, "rm", f"s3://tenant-a/{unique}/cli")
    sdk.delete_object(Bucket="tenant-b", Key="legacy/one")
    answer = sdk.delete_objects(Bucket="tenant-c", Delete={"Objects": [{"Key": f"{unique}/put"}, {"Key": "legacy/two"}]})
    assert not answer.get("Errors")
    expected |= {("tenant-a", f"{unique}/cli"): None, ("tenant-b", "legacy/one"): None,
                 ("tenant-c", f"{unique}/put"): None, ("tenant-c", "legacy/two"): None}
    proxy.wait_applied()

    old, new = origin.client(), new_store.client()
    for (bucket, key), digest in expected.items():
        assert sha256_of(new, bucket, key) == digest, (bucket, key)
        assert sha256_of(old, bucket, key) == digest, f"s3://{bucket}/{key} at the origin"
    assert old.head_object(Bucket="tenant-a", Key=f"{unique}/put")["Metadata"] == {"tenant": "tenant-a"}
    listed = {bucket: sorted(o["Key"] for o in old.list_objects_v2(Bucket=bucket, Prefix=f"{unique}/").get("Contents", []))
              for bucket in BUCKETS}
    assert listed == {"tenant-a": [f"{unique}/multipart", f"{unique}/put"],
                      "tenant-b": [f"{unique}/cli", f"{unique}/multipart", f"{unique}/put"],
                      "tenant-c": [f"{unique}/cli", f"{unique}/multipart"]}, "each bucket's writes in its namesake only"
    assert proxy.metric("backorigin_writethrough_retries_total", scope="lane") == 0, "the worker had the pattern's secret"


def test_verify_check_origin_of_a_bucket_only_the_pattern_names(tmp_path, proxy, new_store, origin, unique, monkeypatch):
    for name, value in STORE_ENV.items():  # verify reads the store with the proxy's credentials
        monkeypatch.setenv(name, value)
    proxy.client().put_object(Bucket="tenant-b", Key=f"{unique}/checked", Body=b"through the proxy")
    new_store.client().put_object(Bucket="tenant-b", Key=f"{unique}/behind", Body=b"straight to the store")
    proxy.wait_applied()
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{unique}/checked\n{unique}/behind\n")
    ran = run_cli("verify", "--check", "origin", "--rules", proxy.rules, "--store", new_store.endpoint, "--bucket", "tenant-b",
                  "--keys", keys)
    assert ran.returncode == 1 and f"{origin.endpoint}/tenant-b/{unique}/behind" in ran.stdout, ran.stdout + ran.stderr
    keys.write_text(f"{unique}/checked\n")
    ran = run_cli("verify", "--check", "origin", "--rules", proxy.rules, "--store", new_store.endpoint, "--bucket", "tenant-b",
                  "--keys", keys)
    assert ran.returncode == 0, ran.stdout + ran.stderr
