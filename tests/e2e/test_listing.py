"""The merged listing (backorigin.listing) against real stores; its pure parts are tests/unit/test_listing.py.

The same listing as the pure model gives, against two real SeaweedFS, the store and a SigV4-only origin holding 2,000+
keys across nested prefixes, through `MergedListing` (boto3 with the proxy's and MirrorAuth's
credentials), at page sizes 1, 7 and 1000.

End to end: boto3's paginator, `aws s3 ls --recursive` and `rclone lsf` through mitmdump with
backorigin_merged_listing=true.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from mitmproxy import http

from backorigin.listing.hiding import hide_tombstoned
from backorigin.listing.merge import merged_listing
from backorigin.listing.mergedlisting import MergedListing
from backorigin.listing.request import Entry
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.s3.reading import Names, Reading, SentRequest, Store, read
from backorigin.tombstones.tombstones import LocalTombstones
from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.clients import CLEAN_PATH, Target, aws_env, boto3_client, rclone_command, rclone_env
from tests.listing_support import NS, Listed, model_items, page_through, parse_page, sort_key
from tests.modes_support import ModeMitmdump
from tests.support import write_rules

# against SeaweedFS -------------------------------------------------------------------------------

BUCKET = "merged-bucket"
ORIGIN_BUCKET = "origin-bucket"
STORE_KEYS = ("storekey", "storesecret")
ORIGIN_KEYS = ("originkey", "originsecret")
TOPS = ("alpha", "alpha-beta", "alpha.gamma", "beta")  # 'alpha/' and 'alpha-beta/' sort apart in S3 and SeaweedFS order
SMALL = "beta/00/"  # the prefix page size 1 walks
HIDDEN = frozenset({"beta/09/049.txt", "alpha/05/000.txt"})


@dataclass(frozen=True)
class Data:
    origin_keys: frozenset[str]  # in the origin bucket
    store_keys: frozenset[str]
    union: frozenset[str]  # what a merged listing of the whole bucket shows
    store_sizes: dict[str, int]


def _origin_layout() -> tuple[set[str], set[str]]:
    """(origin bucket keys, the bucket keys they list as): 2,000 under root/ (rule 2) in 4 x 10
    directories, docs for rule 1, and keys neither rule may list."""
    listed = {f"{top}/{middle:02d}/{leaf:03d}.txt" for top in TOPS for middle in range(10) for leaf in range(50)}
    listed |= {f"top-{i}.txt" for i in range(5)}
    origin = {f"root/{key}" for key in listed}
    docs = {f"docs/{part}/{i:02d}.md" for part in ("a", "b") for i in range(20)}
    origin |= docs
    listed |= docs
    origin |= {"docs/a/readme.txt"}  # rule 1's prefix, not its suffix, and rule 2's origin lacks it
    origin |= {f"root/docs/shadowed-{i}.md" for i in range(5)}  # rule 1 claims docs/*.md first
    origin |= {f"elsewhere/{i}.txt" for i in range(5)}  # outside rule 2's MirrorURL prefix
    return origin, listed


def _store_layout() -> set[str]:
    overlap = {f"alpha/{middle:02d}/{leaf:03d}.txt" for middle in range(10) for leaf in range(0, 50, 5)}  # 100
    own = {f"gamma/{i:02d}/x.bin" for i in range(40)} | {f"{SMALL}s{i}.txt" for i in range(10)}
    own |= {"alpha/05/zz-store-only.txt", "docs/a/store.md", "alpha-beta/11/new.txt"}
    return overlap | own


def _put_all(client: Any, bucket: str, bodies: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(48) as pool:
        list(pool.map(lambda item: client.put_object(Bucket=bucket, Key=item[0], Body=item[1]), bodies.items()))
    client.close()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The store and a SigV4-only origin, both SeaweedFS, filled in parallel."""
    store = EmbeddedStore(tmp_path_factory.mktemp("listing-store"), free_ports(1, with_grpc=True)[0], *STORE_KEYS)
    origin = EmbeddedStore(tmp_path_factory.mktemp("listing-origin"), free_ports(1, with_grpc=True)[0], *ORIGIN_KEYS)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(EmbeddedStore.start, (store, origin)))
        store.create_buckets([BUCKET])
        origin.create_buckets([ORIGIN_BUCKET])
        origin_keys, listed = _origin_layout()
        store_keys = _store_layout()
        store_bodies = {key: b"store copy of " + key.encode() for key in store_keys}
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda job: _put_all(*job), [
                (origin.client(), ORIGIN_BUCKET, {key: b"o" for key in origin_keys}),
                (store.client(), BUCKET, store_bodies),
            ]))
        data = Data(frozenset(origin_keys), frozenset(store_keys), frozenset(listed | store_keys),
                    {key: len(body) for key, body in store_bodies.items()})
        yield store, origin, data
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(EmbeddedStore.stop, (store, origin)))


def rules_for(origin: EmbeddedStore) -> list[dict]:
    auth = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": ORIGIN_KEYS[0], "AccessKeySecret": ORIGIN_KEYS[1]}
    return [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "docs/", "KeySuffixEquals": ".md", "HttpErrorCodeReturnedEquals": 404},
         "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"{origin.endpoint}/{ORIGIN_BUCKET}/", "MirrorAuth": auth}},
        {"RuleNumber": 2, "Condition": {"HttpErrorCodeReturnedEquals": 404},
         "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"{origin.endpoint}/{ORIGIN_BUCKET}/root/", "MirrorAuth": auth}},
    ]


@pytest.fixture(scope="module")
def merged(stores):
    """The I/O side of the addon's merged listing, with the store's keys as the proxy's own."""
    store, origin, data = stores
    book = RuleBook("test", {BUCKET: tuple(RoutingRule.model_validate(rule) for rule in rules_for(origin))})
    client = store.client()
    return MergedListing(store_client=lambda endpoint: client), book, store, data


async def _merged_pages(merged, query: dict[str, str], hidden: frozenset[str] = frozenset()) -> Listed:
    listings, book, store, data = merged
    sides = await listings.sides(BUCKET, book, store.endpoint, http.Request.make("GET", f"{store.endpoint}/{BUCKET}?list-type=2"))
    assert [side.order for side in sides] == ["path"] * 3  # SeaweedFS on both sides

    async def fetch(q: Mapping[str, str]) -> bytes:
        return await merged_listing(q, BUCKET, sides[0], sides[1:], hidden.__contains__)

    return await page_through(fetch, query, "path", max_pages=len(data.union) + 2)


def _expected(data: Data, prefix: str = "", delimiter: str = "", hidden: frozenset[str] = frozenset()) -> list[Entry]:
    union = {k for k in data.union if k not in hidden or k in data.store_keys}
    return model_items(union, prefix, delimiter, "", "path")


@pytest.mark.parametrize(("page", "prefix"), [(1000, ""), (7, ""), (1, SMALL)], ids=["1000", "7", "1-small-prefix"])
async def test_merged_listing_of_seaweedfs_and_a_sigv4_origin(merged, page, prefix):
    data = merged[3]
    assert len(data.origin_keys) >= 2000
    listed = await _merged_pages(merged, {"list-type": "2", "prefix": prefix, "max-keys": str(page)}, HIDDEN)
    expected = _expected(data, prefix, hidden=HIDDEN)
    assert listed.keys == [e.key for e in expected]
    assert len(listed.keys) == len(set(listed.keys))
    assert len(listed.pages) == max(1, -(-len(expected) // page))
    sizes = {e.key: e.size for e in listed.entries}
    assert all(sizes[key] == size for key, size in data.store_sizes.items() if key.startswith(prefix))  # the store wins
    assert sizes.get(f"{prefix}000.txt", 1) == 1  # the origin's own size for an origin-only key


async def test_merged_listing_with_a_delimiter_walks_the_tree(merged):
    """As rclone walks: a delimiter listing per level (ListObjects v1 here), at page size 7."""
    data = merged[3]
    found: list[str] = []
    pending = [""]
    for _ in range(200):  # a bounded walk of a tree of about 100 directories
        if not pending:
            break
        prefix = pending.pop()
        query = {"prefix": prefix, "delimiter": "/", "max-keys": "7"}
        listed = await _merged_pages(merged, query)
        assert [(e.key, e.is_prefix) for e in listed.entries] == [(e.key, e.is_prefix) for e in _expected(data, prefix, "/")]
        found += listed.keys
        pending += listed.prefixes
    assert not pending
    assert sorted(found) == sorted(data.union)


async def test_an_origin_key_listed_is_one_the_origin_has(merged, stores):
    _, origin, data = stores
    listed = await _merged_pages(merged, {"list-type": "2", "prefix": "top-"})
    assert listed.keys == [f"top-{i}.txt" for i in range(5)]
    body = origin.client().get_object(Bucket=ORIGIN_BUCKET, Key="root/top-0.txt")["Body"].read()
    assert body == b"o"


def _signed(store: EmbeddedStore, path: str, secret: str = STORE_KEYS[1]) -> http.Request:
    """A request for the store signed as a client signs it (SigV4 in headers), as mitmproxy holds it."""
    signed = AWSRequest(method="GET", url=store.endpoint + path)
    S3SigV4Auth(Credentials(STORE_KEYS[0], secret), "s3", "us-east-1").add_auth(signed)
    return http.Request.make("GET", store.endpoint + path, headers=dict(signed.headers.items()))


def _asked(store: EmbeddedStore, request: http.Request, book: RuleBook) -> tuple[http.Request, RuleBook, Reading]:
    """The request, the rules and the store's reading of the request (s3.reading), as the addon hands them over."""
    sent = SentRequest(request.scheme, request.host, request.port, (f"{request.host}:{request.port}",), request.path)  # as signed
    reading = read(sent, Names((Store.named(store.endpoint),), frozenset({"127.0.0.1"})))
    assert isinstance(reading, Reading)
    return request, book, reading


async def test_answer_pages_with_our_tokens_and_the_store_decides_each_page(merged, tmp_path):
    """MergedListing.answer, what the request hook calls: the store lets each page through first."""
    listings, book, store, data = merged
    tombstones = LocalTombstones(tmp_path / "tombstones")
    for key in HIDDEN:
        tombstones.add("merged-bucket", key)
    expected = [k for k in _union_under(data, "beta/0") if k not in HIDDEN]
    keys: list[str] = []
    path = "/merged-bucket?list-type=2&max-keys=100&prefix=beta%2F0"
    try:
        for _ in range(len(expected) // 100 + 2):
            answer = await listings.answer(*_asked(store, _signed(store, path), book), tombstoned=hide_tombstoned(tombstones))
            assert answer is not None and answer.status_code == 200
            assert answer.headers["content-type"] == "application/xml"
            root, entries = parse_page(answer.content or b"")
            keys += [e.key for e in entries]
            token = root.findtext("s3:NextContinuationToken", "", NS)
            if not token:
                break
            wrong = _signed(store, f"{path}&continuation-token={token}", "wrong")
            assert await listings.answer(*_asked(store, wrong, book)) is None  # the store answers that one itself: 403
            path = f"/merged-bucket?continuation-token={token}&list-type=2&max-keys=100&prefix=beta%2F0"
        assert sorted(keys) == expected and len(keys) == len(set(keys))
        assert await listings.answer(*_asked(store, _signed(store, "/merged-bucket?list-type=2", "wrong"), book)) is None
        assert await listings.answer(*_asked(store, _signed(store, "/merged-bucket?list-type=2"), RuleBook("none", {}))) is None
        assert await listings.answer(*_asked(store, _signed(store, "/merged-bucket?location"), book)) is None
    finally:
        await listings.aclose()


# end to end: through mitmdump ------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_proxy(tmp_path_factory, stores):
    """mitmdump with the addon and backorigin_merged_listing=true in front of the store (its keys in
    the environment: the proxy lists the store with them). Fails until the option is wired."""
    store, origin, _ = stores
    workdir = tmp_path_factory.mktemp("listing-proxy")
    rules = write_rules(workdir / "rules.json", {BUCKET: rules_for(origin)})
    proxy = ModeMitmdump(
        f"reverse:{store.endpoint}", rules, workdir,
        {"keep_host_header": "true", "backorigin_merged_listing": "true"},
        env={"AWS_ACCESS_KEY_ID": STORE_KEYS[0], "AWS_SECRET_ACCESS_KEY": STORE_KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"},
    ).start()
    try:
        with closing(boto3_client(_target(proxy))) as client:
            token = client.list_objects_v2(Bucket=BUCKET, MaxKeys=1).get("NextContinuationToken", "")
        if not token.startswith("bo1."):
            pytest.fail("the proxy does not merge listings: backorigin_merged_listing is not wired into the addon "
                        "(see backorigin/listing/addon.py, MergedListing.answer)")
        yield proxy
    finally:
        proxy.stop()


PAGES = [(1000, ""), (7, ""), (1, SMALL)]
PAGE_IDS = ["1000", "7", "1-small-prefix"]


def _target(proxy) -> Target:
    return Target(proxy.url, *STORE_KEYS)


def _union_under(data: Data, prefix: str) -> list[str]:
    return sorted(k for k in data.union if k.startswith(prefix))


@pytest.mark.parametrize(("page", "prefix"), PAGES, ids=PAGE_IDS)
def test_boto3_paginator_through_the_proxy(merged_proxy, stores, page, prefix):
    data = stores[2]
    with closing(boto3_client(_target(merged_proxy))) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": page})
        keys = [item["Key"] for part in pages for item in part.get("Contents", [])]
    assert sorted(keys) == _union_under(data, prefix) and len(keys) == len(set(keys))


def test_boto3_v1_paginator_and_a_get_of_a_listed_origin_key(merged_proxy, stores):
    data = stores[2]
    with closing(boto3_client(_target(merged_proxy))) as client:
        pages = client.get_paginator("list_objects").paginate(Bucket=BUCKET, Delimiter="/", PaginationConfig={"PageSize": 3})
        prefixes = [p["Prefix"] for part in pages for p in part.get("CommonPrefixes", [])]
        assert prefixes == sorted({k.split("/")[0] + "/" for k in data.union if "/" in k}, key=sort_key("path"))
        assert client.get_object(Bucket=BUCKET, Key="beta/03/007.txt")["Body"].read() == b"o"  # only the origin has it


@pytest.mark.parametrize(("page", "prefix"), PAGES, ids=PAGE_IDS)
def test_aws_s3_ls_recursive_through_the_proxy(merged_proxy, stores, tmp_path, page, prefix):
    data = stores[2]
    command = [str(Path(CLEAN_PATH.split(":")[0]) / "aws"), "--endpoint-url", merged_proxy.url, "s3", "ls", "--recursive",
               "--page-size", str(page), f"s3://{BUCKET}/{prefix}"]
    done = subprocess.run(command, env=aws_env(_target(merged_proxy), tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    keys = [line.split(None, 3)[3] for line in done.stdout.splitlines() if line.strip()]
    assert sorted(keys) == _union_under(data, prefix) and len(keys) == len(set(keys))


@pytest.mark.parametrize(("page", "prefix", "version"), [(1000, "", "2"), (7, "", "1"), (1, SMALL, "2")],
                         ids=["1000-v2", "7-v1", "1-small-prefix-v2"])
def test_rclone_lsf_through_the_proxy(merged_proxy, stores, tmp_path, page, prefix, version):
    """rclone lists directory by directory (a delimiter listing per level), with ListObjects v1 or v2."""
    data = stores[2]
    command = rclone_command("lsf", "-R", "--files-only", "--s3-list-chunk", str(page), "--s3-list-version", version,
                             f"target:{BUCKET}/{prefix}")
    done = subprocess.run(command, env=rclone_env(_target(merged_proxy), tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    keys = [prefix + line for line in done.stdout.splitlines()]
    assert sorted(keys) == _union_under(data, prefix) and len(keys) == len(set(keys))


def test_the_store_still_decides_who_may_list_every_page(merged_proxy):
    with closing(boto3_client(_target(merged_proxy))) as allowed, \
            closing(boto3_client(Target(merged_proxy.url, STORE_KEYS[0], "not the secret"))) as stranger:
        first = allowed.list_objects_v2(Bucket=BUCKET, MaxKeys=7)
        assert first["IsTruncated"] and first["NextContinuationToken"].startswith("bo1.")
        for attempt in ({}, {"ContinuationToken": first["NextContinuationToken"]}):
            with pytest.raises(ClientError) as refused:
                stranger.list_objects_v2(Bucket=BUCKET, MaxKeys=7, **attempt)
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        second = allowed.list_objects_v2(Bucket=BUCKET, MaxKeys=7, ContinuationToken=first["NextContinuationToken"])
        assert not {o["Key"] for o in first["Contents"]} & {o["Key"] for o in second["Contents"]}


def test_a_key_deleted_through_the_proxy_is_no_longer_listed(merged_proxy, stores):
    """Tombstones hide origin keys from the merged listing (last in this file: it changes the data)."""
    data = stores[2]
    gone = sorted(data.union - data.store_keys)[0]  # only the origin has it
    prefix = gone.rsplit("/", 1)[0] + "/"
    with closing(boto3_client(_target(merged_proxy))) as client:
        client.delete_object(Bucket=BUCKET, Key=gone)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        keys = [item["Key"] for part in pages for item in part.get("Contents", [])]
    assert gone not in keys and sorted(keys) == [k for k in _union_under(data, prefix) if k != gone]
