"""One ETag per object (issue 20): an S3 origin's multipart ETag is carried over. The origin is a
second SeaweedFS holding objects uploaded in 8 MiB parts and in 5 MiB parts plus a remainder, behind
a relay that keeps its access log; the proxy merges listings. `aws s3 sync` and `rclone copy` get
every object on the first run (exit 0, the bytes right, one origin GET each), and the store ends up
with the origin's ETag. A large miss streamed before its body has arrived already carries it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.clients import VENV_BIN, Target, aws_env, boto3_client, rclone_command, rclone_env, sha256_of_file
from tests.modes_support import ModeMitmdump
from tests.support import Mitmdump, Relay, wait_for, write_rules

BUCKET, ORIGIN_BUCKET = "etag-bucket", "etag-origin"
STORE_KEYS, ORIGIN_KEYS = ("etagstore", "etagstoresecret"), ("etagorigin", "etagoriginsecret")
MiB = 1024 * 1024
# name: (size, the part size it is uploaded to the origin with; 0 for one PUT)
OBJECTS = {"eight.bin": (20 * MiB + 3, 8 * MiB), "five.bin": (5 * MiB + 70_000, 5 * MiB), "small.txt": (70_000, 0)}
PREFIXES = ("aws/", "rclone/", "slow/")  # a fresh copy for each test: every object is a miss


@dataclass(frozen=True)
class Sites:
    store: EmbeddedStore
    origin: EmbeddedStore
    log: Relay  # the origin's access log
    proxy: Mitmdump
    sha256: dict[str, str]  # of each key's body
    origin_etag: dict[str, str]

    @property
    def target(self) -> Target:
        return Target(self.proxy.url, *STORE_KEYS)

    def origin_gets(self, key: str) -> int:
        return sum(1 for line in self.log.requests if line == f"GET /{ORIGIN_BUCKET}/{key} HTTP/1.1")


def _upload(origin: EmbeddedStore, key: str, body: bytes, part: int) -> str:
    with closing(origin.client()) as client:
        if part:
            config = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
            client.upload_fileobj(_Bytes(body), ORIGIN_BUCKET, key, Config=config)
        else:
            client.put_object(Bucket=ORIGIN_BUCKET, Key=key, Body=body)
        return client.head_object(Bucket=ORIGIN_BUCKET, Key=key)["ETag"]


class _Bytes:
    def __init__(self, body: bytes) -> None:
        self.body, self.at = body, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.body) if size < 0 else self.at + size
        chunk, self.at = self.body[self.at:end], min(end, len(self.body))
        return chunk


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Iterator[Sites]:
    store = EmbeddedStore(tmp_path_factory.mktemp("etag-store"), free_ports(1, with_grpc=True)[0], *STORE_KEYS)
    origin = EmbeddedStore(tmp_path_factory.mktemp("etag-origin"), free_ports(1, with_grpc=True)[0], *ORIGIN_KEYS)
    log = slow = None
    proxy = None
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(EmbeddedStore.start, (store, origin)))
        store.create_buckets([BUCKET])
        origin.create_buckets([ORIGIN_BUCKET])
        sha256, origin_etag = {}, {}
        jobs = []
        for prefix in PREFIXES:
            for name, (size, part) in OBJECTS.items():
                body = os.urandom(size)
                sha256[prefix + name] = hashlib.sha256(body).hexdigest()
                jobs.append((prefix + name, body, part))
        with ThreadPoolExecutor(4) as pool:
            for (key, _, _), etag in zip(jobs, pool.map(lambda job: _upload(origin, *job), jobs), strict=True):
                origin_etag[key] = etag
        port = int(origin.endpoint.rsplit(":", 1)[1])
        log, slow = Relay(port), Relay(port, rate=4 * MiB)
        auth = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": ORIGIN_KEYS[0], "AccessKeySecret": ORIGIN_KEYS[1]}
        workdir = tmp_path_factory.mktemp("etag-proxy")
        rules = write_rules(workdir / "rules.json", {BUCKET: [
            {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "slow/", "HttpErrorCodeReturnedEquals": 404},
             "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"http://127.0.0.1:{slow.port}/{ORIGIN_BUCKET}/",
                          "MirrorAuth": auth}},
            {"RuleNumber": 2, "Condition": {"HttpErrorCodeReturnedEquals": 404},
             "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"http://127.0.0.1:{log.port}/{ORIGIN_BUCKET}/",
                          "MirrorAuth": auth}},
        ]})
        proxy = ModeMitmdump(
            f"reverse:{store.endpoint}", rules, workdir,
            # misses over 1 MiB are streamed as they arrive: the ETag must be known before the body
            {"keep_host_header": "true", "backorigin_merged_listing": "true", "backorigin_max_inline": "1m"},
            env={"AWS_ACCESS_KEY_ID": STORE_KEYS[0], "AWS_SECRET_ACCESS_KEY": STORE_KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"},
        ).start()
        yield Sites(store, origin, log, proxy, sha256, origin_etag)
    finally:
        if proxy is not None:
            proxy.stop()
        for relay in (log, slow):
            if relay is not None:
                relay.close()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(EmbeddedStore.stop, (store, origin)))


def _stored_etag(sites: Sites, key: str) -> str | None:
    with closing(sites.store.client()) as client:
        try:
            return client.head_object(Bucket=BUCKET, Key=key)["ETag"]
        except ClientError:
            return None


def _listed_etags(sites: Sites, prefix: str) -> dict[str, str]:
    with closing(boto3_client(sites.target)) as client:
        return {item["Key"]: item["ETag"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}


def _check_copies(sites: Sites, prefix: str, into: Path) -> None:
    """Every object's bytes right, fetched from the origin once, stored with the origin's ETag."""
    for name in OBJECTS:
        key = prefix + name
        assert sha256_of_file(into / name) == sites.sha256[key], key
        assert sites.origin_gets(key) == 1, (key, [line for line in sites.log.requests if key in line])
        assert wait_for(lambda key=key: _stored_etag(sites, key), within=60) == sites.origin_etag[key], key
    assert _listed_etags(sites, prefix) == {prefix + n: sites.origin_etag[prefix + n] for n in OBJECTS}


def test_the_origins_objects_have_multipart_etags(sites):
    """The set-up is what the cases need: 3 parts of 8 MiB, 2 of 5 MiB, one PUT."""
    assert sites.origin_etag["aws/eight.bin"].endswith('-3"') and sites.origin_etag["aws/five.bin"].endswith('-2"')
    assert "-" not in sites.origin_etag["aws/small.txt"]


def test_aws_s3_sync_with_merged_listing_succeeds_on_the_first_run(sites, tmp_path):
    assert _listed_etags(sites, "aws/") == {"aws/" + n: sites.origin_etag["aws/" + n] for n in OBJECTS}
    into = tmp_path / "synced"
    command = [str(VENV_BIN / "aws"), "--endpoint-url", sites.proxy.url, "s3", "sync", "--no-progress",
               f"s3://{BUCKET}/aws/", str(into)]
    done = subprocess.run(command, env=aws_env(sites.target, tmp_path), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    _check_copies(sites, "aws/", into)


def test_rclone_copy_with_merged_listing(sites, tmp_path):
    into = tmp_path / "copied"
    command = rclone_command("copy", f"target:{BUCKET}/rclone", str(into))
    done = subprocess.run(command, env=rclone_env(sites.target, tmp_path), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    _check_copies(sites, "rclone/", into)


def test_a_large_miss_streamed_before_its_body_has_arrived_carries_the_origins_etag(sites):
    """The origin sends 4 MiB/s, so the 20 MiB body takes 5 s: the ranged answer, its ETag and
    an If-Match with the listed ETag all come before the object is whole (not stored yet)."""
    key, etag = "slow/eight.bin", sites.origin_etag["slow/eight.bin"]
    with closing(boto3_client(sites.target)) as client:
        ranged = client.get_object(Bucket=BUCKET, Key=key, Range="bytes=100-199", IfMatch=etag)
        assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206 and ranged["ETag"] == etag
        assert ranged["ContentRange"] == f"bytes 100-199/{OBJECTS['eight.bin'][0]}"
        part = ranged["Body"].read()
        assert _stored_etag(sites, key) is None  # answered while the body was still arriving
        head = client.head_object(Bucket=BUCKET, Key=key)
        assert head["ETag"] == etag and head["ContentLength"] == OBJECTS["eight.bin"][0]
        whole = client.get_object(Bucket=BUCKET, Key=key, IfMatch=etag)["Body"].read()
    assert whole[100:200] == part and hashlib.sha256(whole).hexdigest() == sites.sha256[key]
    assert wait_for(lambda: _stored_etag(sites, key), within=60) == etag
