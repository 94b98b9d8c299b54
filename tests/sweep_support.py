"""A private S3 bucket as the sweep's origin (a second SeaweedFS with SigV4 on) holding
`count` small keys, shared by the end-to-end sweep tests and the sweep benchmark; and a fake
boto3 listing for the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.support import mirror_rule

ORIGIN_KEYS = 2000  # the end-to-end tests' S3 origin (tests/e2e/conftest.py)
ORIGIN_BUCKET = "origin-bucket"
ORIGIN_PREFIX = "data/"
AUTH = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "backfillkey", "AccessKeySecret": "backfillsecret"}


def origin_body(number: int) -> bytes:
    return f"origin object {number}\n".encode() * (number % 7 + 1)


def origin_key(number: int) -> str:
    """The bucket's key of the origin's object `number` (the origin's key without its prefix)."""
    return f"k{number:04d}"


def start_s3_origin(folder: Path, count: int) -> EmbeddedStore:
    """data/k0000, data/k0001... in origin-bucket, put by a thread pool; stop it with stop_quickly."""
    origin = EmbeddedStore(folder, free_ports(1, with_grpc=True)[0], AUTH["AccessKeyId"], AUTH["AccessKeySecret"])
    origin.start()
    origin.create_buckets([ORIGIN_BUCKET])
    client = origin.client()
    with ThreadPoolExecutor(10) as pool:  # boto3 pools 10 connections
        list(pool.map(lambda n: client.put_object(Bucket=ORIGIN_BUCKET, Key=ORIGIN_PREFIX + origin_key(n),
                                                  Body=origin_body(n), ContentType="text/plain"), range(count)))
    return origin


def stop_quickly(store: EmbeddedStore) -> None:
    """A throwaway store: no need to wait for a graceful stop."""
    assert store.process is not None
    store.process.kill()
    store.process.wait()


def s3_origin_rule(origin: EmbeddedStore) -> dict:
    """The Mirror rule that makes the S3 origin's data/KEY the bucket's KEY."""
    return mirror_rule(1, f"{origin.endpoint}/{ORIGIN_BUCKET}/{ORIGIN_PREFIX}", MirrorAuth=AUTH)


class FakeListing:
    """A boto3 client's paginator over one listing, counting the pages asked for; with `refusal`,
    a listing that raises it."""

    def __init__(self, keys: list[str], refusal: Exception | None = None) -> None:
        self.keys = keys
        self.refusal = refusal
        self.pages = 0
        self.prefixes: list[str] = []

    def get_paginator(self, name: str) -> FakeListing:
        return self

    def paginate(self, Bucket: str, Prefix: str) -> Iterator[dict]:
        self.prefixes.append(Prefix)
        if self.refusal is not None:
            raise self.refusal
        matching = [key for key in self.keys if key.startswith(Prefix)]
        for start in range(0, len(matching), 1000):
            self.pages += 1
            yield {"Contents": [{"Key": key, "Size": 1} for key in matching[start:start + 1000]]}
