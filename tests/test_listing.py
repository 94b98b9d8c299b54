"""Issue 12, part 3: the merged listing (addon/listing.py).

Pure: paging through the merge of a fake store and fake S3 origins (S3's semantics, see
tests/listing_support.py) gives exactly the listing S3 would give of their union: sorted,
deduplicated with the store's entry kept, hidden (tombstoned) and unmirrorable origin keys
left out, prefix, delimiter, max-keys, start-after, marker and continuation tokens right.

I/O: the same against two real SeaweedFS, the store and a SigV4-only origin holding 2,000+
keys across nested prefixes, through `MergedListings` (boto3 with the proxy's and MirrorAuth's
credentials), at page sizes 1, 7 and 1000.

End to end: boto3's paginator, `aws s3 ls --recursive` and `rclone lsf` through mitmdump with
backorigin_merged_listing=true.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tutils

from backorigin.listing import merge as listing
from backorigin.listing.merge import (
    Entry,
    ListingError,
    ListParams,
    MergedListings,
    Order,
    OriginBucket,
    Side,
    decode_token,
    encode_token,
    list_request,
    merged_listing,
    origin_side,
    parse_params,
    roll_up,
)
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.clients import CLEAN_PATH, Target, aws_env, boto3_client, rclone_command, rclone_env
from tests.listing_support import NS, FakeBucket, Listed, model_items, page_through, parse_page, sort_key
from tests.modes_support import ModeMitmdump
from tests.support import write_rules

KEY_CHARS = "ab/-.é"


def mirror(number: int, url: str, prefix: str = "", suffix: str = "", **redirect: Any) -> RoutingRule:
    condition: dict[str, Any] = {"HttpErrorCodeReturnedEquals": 404}
    if prefix:
        condition["KeyPrefixEquals"] = prefix
    if suffix:
        condition["KeySuffixEquals"] = suffix
    return RoutingRule.model_validate(
        {"RuleNumber": number, "Condition": condition, "Redirect": {"RedirectType": "Mirror", "MirrorURL": url, **redirect}}
    )


def mirrorable(key: str) -> bool:
    """What a GET through the proxy can fetch from an origin unchanged (see origin.origin_key/origin_url)."""
    return "//" not in key and not key.startswith("/") and not any(s in (".", "..") for s in key.split("/"))


@dataclass
class World:
    """A store and origins (one per rule), as fakes, and the union a merged listing must show."""

    store: FakeBucket
    rules: list[RoutingRule]
    origins: list[FakeBucket]
    hidden: frozenset[str] = frozenset()

    @property
    def order(self) -> Order:
        return self.store.order

    def sides(self) -> list[Side]:
        sides = [Side(self.store.lister, order=self.order)]
        for rule, origin in zip(self.rules, self.origins, strict=True):
            side = origin_side(rule, self.rules, origin.lister, order=self.order)
            assert side is not None
            sides.append(side)
        return sides

    def union(self) -> dict[str, int]:
        """key -> the size listed for it (the store's bodies are 1 byte, each origin's its own)."""
        union: dict[str, int] = {}
        for rule, origin in zip(self.rules, self.origins, strict=True):
            where = OriginBucket.of(rule)
            assert where is not None
            for origin_key in origin.keys:
                key = origin_key[len(where.base):]
                if not origin_key.startswith(where.base) or key in self.hidden or not mirrorable(key):
                    continue
                first = next((r for r in self.rules if key.startswith(r.Condition.KeyPrefixEquals)
                              and key.endswith(r.Condition.KeySuffixEquals)), None)
                if first is rule:
                    union[key] = origin.size
        union.update({key: self.store.size for key in self.store.keys})
        return union

    def expected(self, params: ListParams) -> list[Entry]:
        """S3's listing of the union; but a start that is a common prefix itself is not listed again
        (it is where the page before ended)."""
        union = self.union()
        items = model_items(union, params.prefix, params.delimiter, params.after, self.order,
                            lambda key: Entry(key, size=union[key]))
        return [e for e in items if not (e.is_prefix and e.key == params.after)]

    async def page(self, query: Mapping[str, str]) -> bytes:
        sides = self.sides()
        return await merged_listing(query, "bucket", sides[0], sides[1:], self.hidden.__contains__)


def check_listing(listed: Listed, expected: Sequence[Entry], order: Order) -> None:
    sort = sort_key(order)
    got = [(e.key, e.is_prefix) for e in listed.entries]
    assert got == [(e.key, e.is_prefix) for e in expected]
    assert [sort(k) for k, _ in got] == sorted({sort(k) for k, _ in got})  # in order, nothing twice
    sizes = {e.key: e.size for e in expected if not e.is_prefix}
    assert {e.key: e.size for e in listed.entries if not e.is_prefix} == sizes  # the store's entry wins


# the pure merge --------------------------------------------------------------------------------

keys = st.text(alphabet=KEY_CHARS, min_size=1, max_size=6)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    order: Order = draw(st.sampled_from(["s3", "path"]))
    store_keys = draw(st.sets(keys, max_size=20))
    rules, origins = [], []
    for number in range(1, draw(st.integers(1, 2)) + 1):
        base = draw(st.sampled_from(["", "p/", "q-r/"]))
        prefix = draw(st.sampled_from(["", "", "a", "a/", "b-", "a/b"]))
        suffix = draw(st.sampled_from(["", "", "a"]))
        rules.append(mirror(number, f"http://127.0.0.1:9/bucket{number}/{base}", prefix, suffix))
        own = draw(st.sets(keys, max_size=20))
        shared = draw(st.sets(st.sampled_from(sorted(store_keys)), max_size=6)) if store_keys else set()
        elsewhere = draw(st.sets(keys, max_size=4))  # outside the MirrorURL's prefix
        origins.append(FakeBucket({base + k for k in own | shared} | elsewhere, order, size=2 + number))
    every_origin_key = sorted({k for o in origins for k in o.keys})
    hidden = draw(st.sets(st.sampled_from(every_origin_key), max_size=5)) if every_origin_key else set()
    hidden |= {k.split("/", 1)[-1] for k in hidden}  # with and without a base
    return World(FakeBucket(store_keys, order), rules, origins, frozenset(hidden))


@st.composite
def queries(draw: st.DrawFn, world: World) -> dict[str, str]:
    known = sorted(world.union()) or ["a"]
    prefix = draw(st.one_of(st.just(""), st.sampled_from(known).map(lambda k: k[: len(k) // 2]),
                            st.text(alphabet=KEY_CHARS, max_size=3)))
    query = {"prefix": prefix, "max-keys": str(draw(st.integers(1, 20)))}
    delimiter = draw(st.sampled_from(["", "/", "/", "-", "/a", "a/"]))
    if delimiter:
        query["delimiter"] = delimiter
    start = draw(st.one_of(st.none(), st.sampled_from(known), st.text(alphabet=KEY_CHARS, min_size=1, max_size=4)))
    v2 = draw(st.booleans())
    if v2:
        query["list-type"] = "2"
    if start is not None:
        query["start-after" if v2 else "marker"] = start
    if draw(st.booleans()):
        query["encoding-type"] = "url"
    return query


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
async def test_paging_through_the_merge_gives_the_union(data):
    world = data.draw(worlds())
    query = data.draw(queries(world))
    expected = world.expected(parse_params(query))
    listed = await page_through(world.page, query, world.order, max_pages=len(expected) + 2)
    check_listing(listed, expected, world.order)
    if "delimiter" not in query:
        assert not listed.prefixes


@pytest.mark.parametrize("order", ["s3", "path"])
async def test_the_store_wins_and_origin_entries_keep_their_own_metadata(order):
    store = FakeBucket({"a/1", "a/2", "b"}, order, size=1)
    origin = FakeBucket({"a/2", "a/3", "c"}, order, size=9)
    world = World(store, [mirror(1, "http://127.0.0.1:9/origin/")], [origin])
    _, entries = parse_page(await world.page({"list-type": "2"}))
    assert [(e.key, e.size, e.etag) for e in entries] == [
        ("a/1", 1, '"1"'), ("a/2", 1, '"1"'), ("a/3", 9, '"9"'), ("b", 1, '"1"'), ("c", 9, '"9"'),
    ]


async def test_common_prefixes_count_against_max_keys_and_roll_up_across_sides():
    store = FakeBucket({"x/1", "y/1", "top"})
    origin = FakeBucket({"x/2", "z/1", "z/2", "other"})
    world = World(store, [mirror(1, "http://127.0.0.1:9/origin/")], [origin])
    root, entries = parse_page(await world.page({"list-type": "2", "delimiter": "/", "max-keys": "3"}))
    assert [(e.key, e.is_prefix) for e in entries] == [("other", False), ("top", False), ("x/", True)]
    assert root.findtext("{http://s3.amazonaws.com/doc/2006-03-01/}KeyCount") == "3"
    listed = await page_through(world.page, {"list-type": "2", "delimiter": "/", "max-keys": "3"}, "s3", 5)
    assert listed.prefixes == ["x/", "y/", "z/"] and listed.keys == ["other", "top"]


async def test_a_page_reads_about_a_page_from_each_side_whatever_the_bucket_size():
    store = FakeBucket({f"k/{i:06d}" for i in range(0, 200_000, 2)})
    origin = FakeBucket({f"k/{i:06d}" for i in range(0, 200_000, 3)})
    world = World(store, [mirror(1, "http://127.0.0.1:9/origin/")], [origin])
    root, entries = parse_page(await world.page({"list-type": "2"}))
    assert len(entries) == 1000 and root.findtext("{http://s3.amazonaws.com/doc/2006-03-01/}IsTruncated") == "true"
    assert store.pulled + origin.pulled <= 2 * 1001
    assert store.calls[0][3] == origin.calls[0][3] == 1000  # one page each (S3 pages hold 1000 at most)


async def test_a_rule_with_a_longer_prefix_gives_one_common_prefix_once_a_key_under_it_shows():
    many = {f"img/2024/{i:04d}/x.jpg" for i in range(5000)}
    origin = FakeBucket({"img/2024/a.jpg", "img/2024/b.png", "img/2025/c.png"} | many)
    rules = [mirror(1, "http://127.0.0.1:9/origin/", "img/2024/", ".jpg")]
    world = World(FakeBucket(set()), rules, [origin])
    _, entries = parse_page(await world.page({"list-type": "2", "delimiter": "/"}))
    assert entries == [Entry("img/", is_prefix=True)]
    assert origin.pulled == 1  # found at once, not by reading through img/2024/
    origin.keys = sorted(set(origin.keys) - many)
    world.hidden = frozenset({"img/2024/a.jpg"})
    _, entries = parse_page(await world.page({"list-type": "2", "delimiter": "/"}))
    assert entries == []


async def test_a_start_inside_a_common_prefix_still_lists_it_and_a_start_that_is_one_skips_it():
    world = World(FakeBucket({"a/b", "b"}), [mirror(1, "http://127.0.0.1:9/origin/")], [FakeBucket({"a/c"})])
    for version, start in (("2", "start-after"), ("1", "marker")):
        query = {"delimiter": "/", start: "a/b", **({"list-type": "2"} if version == "2" else {})}
        _, entries = parse_page(await world.page(query))
        assert [(e.key, e.is_prefix) for e in entries] == [("b", False), ("a/", True)]
        _, entries = parse_page(await world.page({**query, start: "a/"}))
        assert [(e.key, e.is_prefix) for e in entries] == [("b", False)]


async def test_a_delimiter_across_the_rules_prefix_checks_the_whole_common_prefix():
    """The origin lists under the rule's prefix 'x/', where '/a' first occurs only across its end:
    its keys come back unrolled, and 'x/a' must show though its first key is hidden."""
    origin = FakeBucket({"x/ab", "x/ac"})
    world = World(FakeBucket(set()), [mirror(1, "http://127.0.0.1:9/origin/", "x/")], [origin], frozenset({"x/ab"}))
    _, entries = parse_page(await world.page({"list-type": "2", "delimiter": "/a"}))
    assert entries == [Entry("x/a", is_prefix=True)]


async def test_an_origin_in_another_key_order_is_refused():
    world = World(FakeBucket({"a"}, "path"), [mirror(1, "http://127.0.0.1:9/origin/")], [FakeBucket({"b"}, "s3")])
    sides = world.sides()
    sides[1] = Side(world.origins[0].lister, order="s3", name="the origin")
    with pytest.raises(ListingError) as refused:
        await merged_listing({"list-type": "2"}, "bucket", sides[0], sides[1:])
    assert refused.value.status == 501 and "the origin" in refused.value.message


async def test_a_side_that_breaks_its_order_is_caught():
    async def unsorted(prefix: str, delimiter: str, start_after: str, first_page: int):
        for key in ("b", "a"):
            yield Entry(key)

    with pytest.raises(ListingError) as caught:
        await merged_listing({"list-type": "2"}, "bucket", unsorted, [])
    assert caught.value.status == 501


def test_max_keys_encoding_and_defaults():
    assert parse_params({"list-type": "2"}).max_keys == 1000
    assert parse_params({"list-type": "2", "max-keys": "5000"}).max_keys == 1000
    for bad in ({"max-keys": "-1"}, {"max-keys": "ten"}, {"encoding-type": "base64"}):
        with pytest.raises(ListingError) as refused:
            parse_params(bad)
        assert (refused.value.status, refused.value.code) == (400, "InvalidArgument")


async def test_max_keys_zero_lists_nothing():
    world = World(FakeBucket({"a"}), [mirror(1, "http://127.0.0.1:9/origin/")], [FakeBucket({"b"})])
    root, entries = parse_page(await world.page({"list-type": "2", "max-keys": "0"}))
    assert entries == [] and root.findtext("{http://s3.amazonaws.com/doc/2006-03-01/}IsTruncated") == "false"


async def test_url_encoding_and_xml_shape():
    world = World(FakeBucket({"a b/c+d", "ü&<"}), [mirror(1, "http://127.0.0.1:9/origin/")], [FakeBucket(set())])
    body = await world.page({"list-type": "2", "encoding-type": "url", "prefix": "", "delimiter": "/", "start-after": "a"})
    assert b"<Prefix>a%20b/</Prefix>" in body and b"<Key>%C3%BC%26%3C</Key>" in body
    assert b"<EncodingType>url</EncodingType>" in body and b"<StartAfter>a</StartAfter>" in body
    plain = await world.page({"list-type": "2"})
    assert b"<Key>\xc3\xbc&amp;&lt;</Key>" in plain and b"<Key>a b/c+d</Key>" in plain
    assert b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name>' in plain


def test_continuation_tokens_belong_to_their_listing():
    params = parse_params({"list-type": "2", "prefix": "p/", "delimiter": "/"})
    token = encode_token(params, "p/x é")
    assert token.startswith("bo1.") and decode_token(token, params) == "p/x é"
    wrong: list[Callable[[], str]] = [
        lambda: decode_token(token, parse_params({"list-type": "2", "prefix": "q/", "delimiter": "/"})),
        lambda: decode_token(token, parse_params({"list-type": "2", "prefix": "p/"})),
        lambda: decode_token("bo1.!!!", params),
        lambda: decode_token("bo1." + "W10", params),  # base64 of [], not a token
        lambda: decode_token("a-store-token", params),
    ]
    for attempt in wrong:
        with pytest.raises(ListingError) as refused:
            attempt()
        assert (refused.value.status, refused.value.code) == (400, "InvalidArgument")


def test_roll_up():
    assert roll_up("a/b/c", "", "/") == "a/"
    assert roll_up("a/b/c", "a/", "/") == "a/b/"
    assert roll_up("a/b", "a/b", "/") is None
    assert roll_up("a/b", "", "") is None
    assert roll_up("xa/by", "x", "a/") == "xa/"


@pytest.mark.parametrize(("url", "expected"), [
    ("http://h:1/b/", (1, "b")),
    ("http://h:1/b?list-type=2&prefix=x&max-keys=7&encoding-type=url&fetch-owner=true", (2, "b")),
    ("http://h:1/b/?list-type=2&X-Amz-Credential=AK%2F1&X-Amz-Signature=00", (2, "b")),
    ("http://h:1/b?prefix=x&marker=m&delimiter=/", (1, "b")),
    ("http://h:1/b", (1, "b")),
    ("http://h:1/b?location", None),
    ("http://h:1/b?versions", None),
    ("http://h:1/b?uploads", None),
    ("http://h:1/b?list-type=2&versions", None),
    ("http://h:1/b/key", None),
    ("http://h:1/", None),
])
def test_which_requests_are_listings(url, expected):
    request = tutils.treq()
    request.url = url
    listed = list_request(request)
    if expected:
        assert listed is not None and (listed.version, listed.bucket) == expected
    else:
        assert listed is None
    request.method = "HEAD"
    assert list_request(request) is None


def test_virtual_hosted_listing():
    request = tutils.treq()
    request.url = "http://photos.s3.test/?list-type=2"
    request.headers["host"] = "photos.s3.test"
    assert list_request(request, ["s3.test"]) == listing.ListRequest(2, "photos")
    request.url = "http://photos.s3.test/key?list-type=2"
    assert list_request(request, ["s3.test"]) is None


def test_which_rules_are_merged():
    assert OriginBucket.of(mirror(1, "https://s3.example.com/bucket/")) == OriginBucket("https://s3.example.com", "bucket", "")
    assert OriginBucket.of(mirror(1, "http://h:9/bucket/some%20dir/p/")) == OriginBucket("http://h:9", "bucket", "some dir/p/")
    assert OriginBucket.of(mirror(1, "http://h:9/")) is None
    assert OriginBucket.of(mirror(1, "http://h:9/b/", ReplaceKeyWith="x/${key}")) is None
    assert OriginBucket.of(mirror(1, "http://h:9/b/", "a/", EnableReplacePrefix=True, ReplaceKeyPrefixWith="b/")) is None
    assert OriginBucket.of(mirror(1, "http://10.0.0.1:9/b/", MirrorHost="s3.example.com")) is None


def test_an_earlier_rule_and_the_rules_own_conditions_decide_which_keys_an_origin_gives():
    rules = [mirror(1, "http://h:9/one/", "docs/", ".md"), mirror(2, "http://h:9/two/")]
    first, second = (origin_side(rule, rules, FakeBucket(set()).lister) for rule in rules)
    assert first is not None and second is not None
    assert first.visible("docs/a.md") and not first.visible("docs/a.txt") and not first.visible("img/a.md")
    assert not second.visible("docs/a.md") and second.visible("docs/a.txt") and second.visible("img/a.md")
    assert not second.visible("a//b") and not second.visible("a/../b") and not second.visible("/a")
    slashes = mirror(1, "http://h:9/one/", MirrorPassOriginalSlashes=True)
    passing = origin_side(slashes, [slashes], FakeBucket(set()).lister)
    assert passing is not None and passing.visible("a//b")


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
    rules = tuple(RoutingRule.model_validate(rule) for rule in rules_for(origin))
    client = store.client()
    return MergedListings(store_client=lambda endpoint: client), rules, store, data


async def _merged_pages(merged, query: dict[str, str], hidden: frozenset[str] = frozenset()) -> Listed:
    listings, rules, store, data = merged
    sides = await listings.sides(BUCKET, rules, store.endpoint, lambda name: None)
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


async def test_answer_pages_with_our_tokens_and_the_store_decides_each_page(merged):
    """MergedListings.answer, what the request hook calls: the store lets each page through first."""
    listings, rules, store, data = merged
    book = RuleBook("test", {BUCKET: rules})
    expected = [k for k in _union_under(data, "beta/0") if k not in HIDDEN]
    keys: list[str] = []
    path = "/merged-bucket?list-type=2&max-keys=100&prefix=beta%2F0"
    try:
        for _ in range(len(expected) // 100 + 2):
            answer = await listings.answer(_signed(store, path), book, store.endpoint,
                                           tombstoned=lambda bucket, prefix: [k for k in HIDDEN if k.startswith(prefix)])
            assert answer is not None and answer.status_code == 200
            assert answer.headers["content-type"] == "application/xml"
            root, entries = parse_page(answer.content or b"")
            keys += [e.key for e in entries]
            token = root.findtext("s3:NextContinuationToken", "", NS)
            if not token:
                break
            assert await listings.answer(_signed(store, f"{path}&continuation-token={token}", "wrong"), book,
                                         store.endpoint) is None  # the store answers that one itself: 403
            path = f"/merged-bucket?continuation-token={token}&list-type=2&max-keys=100&prefix=beta%2F0"
        assert sorted(keys) == expected and len(keys) == len(set(keys))
        assert await listings.answer(_signed(store, "/merged-bucket?list-type=2", "wrong"), book, store.endpoint) is None
        assert await listings.answer(_signed(store, "/merged-bucket?list-type=2"), RuleBook("none", {}), store.endpoint) is None
        assert await listings.answer(_signed(store, "/merged-bucket?location"), book, store.endpoint) is None
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
                        "(see addon/listing.py, MergedListings.answer)")
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
