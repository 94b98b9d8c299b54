"""The merged listing with a store and an S3 origin behind fronts that hide their Server header
(issue 25 item 3): nginx with `proxy_hide_header Server` and `server_tokens off` (tests/fronts.py)
in front of the store, of the origin, or of both, both SeaweedFS.

The nine keys differ in the two key orders (S3 lists `a-b`, `a.b`, `a/b`, `a0`; SeaweedFS `a/b`,
`a-b`, `a.b`, `a0`), so a merge that takes one order for the other drops or repeats keys. Through
the proxy, `aws s3 sync` brings every file with the right bytes, and ListObjectsV2 paged by 1, 2
and 3 lists every key exactly once, in the store's own order.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
import requests

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.clients import CLEAN_PATH, Target, aws_env, boto3_client
from tests.fronts import hiding_front
from tests.listing_support import sort_key
from tests.modes_support import ModeMitmdump
from tests.support import write_rules

STORE_KEYS = ("frontstore", "frontstoresecret")
ORIGIN_KEYS = ("frontorigin", "frontoriginsecret")
ORIGIN_BUCKET = "fronted-origin"
STORE_OBJECTS = {"a/b": b"the store's a/b\n", "a.c": b"the store's a.c\n", "b/x": b"the store's b/x\n"}
ORIGIN_OBJECTS = {key: f"the origin's {key}\n".encode() * 3
                  for key in ("a/b", "a-b", "a.b", "a0", "a/c/d", "a-c/e", "a.d/f")}
UNION = {**ORIGIN_OBJECTS, **STORE_OBJECTS}  # the store's copy wins
FRONTED = {"store": ("store",), "origin": ("origin",), "both": ("store", "origin")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Iterator[tuple[EmbeddedStore, EmbeddedStore]]:
    store = EmbeddedStore(tmp_path_factory.mktemp("fronts-store"), free_ports(1, with_grpc=True)[0], *STORE_KEYS)
    origin = EmbeddedStore(tmp_path_factory.mktemp("fronts-origin"), free_ports(1, with_grpc=True)[0], *ORIGIN_KEYS)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(EmbeddedStore.start, (store, origin)))
        origin.create_buckets([ORIGIN_BUCKET])
        with closing(origin.client()) as client:
            for key, body in ORIGIN_OBJECTS.items():
                client.put_object(Bucket=ORIGIN_BUCKET, Key=key, Body=body)
        yield store, origin
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(EmbeddedStore.stop, (store, origin)))


@pytest.fixture(scope="module", params=sorted(FRONTED), ids=lambda name: f"{name}-behind-nginx")
def fronted(request, stores, tmp_path_factory) -> Iterator[tuple[ModeMitmdump, str]]:
    """A bucket of its own (the store's three keys), the fronts, and the proxy with the merged
    listing in front of the store (or its front), mirroring the origin (or its front)."""
    store, origin = stores
    behind = FRONTED[request.param]
    bucket = f"fronted-{request.param}"
    store.create_buckets([bucket])
    with closing(store.client()) as client:
        for key, body in STORE_OBJECTS.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)
    workdir = tmp_path_factory.mktemp(f"fronts-{request.param}")
    with ExitStack() as fronts:
        store_url = (fronts.enter_context(hiding_front(workdir / "store-front", store.endpoint)).url
                     if "store" in behind else store.endpoint)
        origin_url = (fronts.enter_context(hiding_front(workdir / "origin-front", origin.endpoint)).url
                      if "origin" in behind else origin.endpoint)
        for url, fronted_side in ((store_url, "store"), (origin_url, "origin")):
            shown = requests.get(url, timeout=10).headers.get("server", "")
            assert ("seaweedfs" in shown.lower()) is (fronted_side not in behind), shown  # the front hides it
        auth = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": ORIGIN_KEYS[0], "AccessKeySecret": ORIGIN_KEYS[1]}
        rules = write_rules(workdir / "rules.json", {bucket: [
            {"RuleNumber": 1, "Condition": {"HttpErrorCodeReturnedEquals": 404},
             "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"{origin_url}/{ORIGIN_BUCKET}/", "MirrorAuth": auth}}]})
        proxy = ModeMitmdump(
            f"reverse:{store_url}", rules, workdir, {"keep_host_header": "true", "backorigin_merged_listing": "true"},
            env={"AWS_ACCESS_KEY_ID": STORE_KEYS[0], "AWS_SECRET_ACCESS_KEY": STORE_KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"},
        )
        proxy.start()
        try:
            yield proxy, bucket
        finally:
            proxy.stop()


@pytest.mark.parametrize("page", [1, 2, 3])
def test_list_objects_v2_pages_list_every_key_once_in_the_stores_order(fronted, page):
    proxy, bucket = fronted
    with closing(boto3_client(Target(proxy.url, *STORE_KEYS))) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": page})
        keys = [item["Key"] for part in pages for item in part.get("Contents", [])]
    assert keys == sorted(UNION, key=sort_key("path"))  # SeaweedFS's order: a/b, a/c/d, a-b, ...


def test_a_delimiter_listing_by_twos_lists_each_folder_once(fronted):
    proxy, bucket = fronted
    with closing(boto3_client(Target(proxy.url, *STORE_KEYS))) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2})
        listed = [(item.get("Key") or item["Prefix"]) for part in pages
                  for item in sorted(part.get("Contents", []) + part.get("CommonPrefixes", []),
                                     key=lambda item: sort_key("path")(item.get("Key") or item["Prefix"]))]
    assert listed == ["a/", "a-b", "a-c/", "a.b", "a.c", "a.d/", "a0", "b/"]


def test_the_order_probe_leaves_nothing_behind(fronted, stores):
    """The probe's two objects and the folder SeaweedFS made for one of them are gone."""
    proxy, bucket = fronted
    assert "lists keys in path order (asked)" in proxy.log()
    with closing(stores[0].client()) as client:
        listed = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    names = [item["Key"] for item in listed.get("Contents", [])] + [item["Prefix"] for item in listed.get("CommonPrefixes", [])]
    assert sorted(names) == ["a.c", "a/", "b/"]


def test_aws_s3_sync_brings_every_file_with_its_bytes(fronted, tmp_path):
    proxy, bucket = fronted
    into = tmp_path / "synced"
    aws = str(Path(CLEAN_PATH.split(":")[0]) / "aws")
    done = subprocess.run([aws, "--endpoint-url", proxy.url, "s3", "sync", "--page-size", "2", f"s3://{bucket}/", str(into)],
                          env=aws_env(Target(proxy.url, *STORE_KEYS), tmp_path), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    synced = {path.relative_to(into).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
              for path in into.rglob("*") if path.is_file()}
    assert synced == {key: hashlib.sha256(body).hexdigest() for key, body in UNION.items()}
