"""The merged listing's pure parts: paging through the merge of a fake store and fake S3
origins (S3's semantics, see tests/listing_support.py) gives exactly the listing S3 would give of
their union: sorted, deduplicated with the store's entry kept, hidden (tombstoned) and
unmirrorable origin keys left out, prefix, delimiter, max-keys, start-after, marker and
continuation tokens right. Which requests are listings, and which keys an origin gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.test import tutils

from backorigin.listing.merge import Side, merged_listing
from backorigin.listing.order import LOOKAHEAD, Learned, Order, reordered
from backorigin.listing.request import (
    Entry,
    ListingError,
    ListParams,
    ListRequest,
    decode_token,
    encode_token,
    list_request,
    parse_params,
    roll_up,
)
from backorigin.listing.sources import origin_side
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.rules.targets import OriginBucket
from backorigin.s3.reading import Names, Reading, SentRequest, as_recorded, read
from tests.listing_support import FakeBucket, Listed, model_items, page_through, parse_page, sort_key

LISTING = tutils.treq(path=b"/bucket?list-type=2")


def book_with(rules: list[RoutingRule]) -> RuleBook:
    return RuleBook("t", {"bucket": tuple(sorted(rules, key=lambda rule: rule.RuleNumber))})


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
    known: tuple[bool, ...] | None = None  # per origin: its order is known from the start (else learned, or never); None: all
    learned: list[Learned] = field(default_factory=list)

    @property
    def order(self) -> Order:
        return self.store.order

    def sides(self) -> list[Side]:
        """As MergedListing.sides makes them: an origin known to list in the store's order is read
        as it lists, any other reordered (what was learned on one page carries to the next)."""
        sides = [Side(self.store.lister, order=self.order)]
        book = book_with(self.rules)
        if not self.learned:
            known = self.known if self.known is not None else (True,) * len(self.origins)
            self.learned = [Learned(f"origin {i}", origin.order if known[i] else None) for i, origin in enumerate(self.origins)]
        for rule, origin, learned in zip(book.rules_for("bucket"), self.origins, self.learned, strict=True):
            lister = origin.lister if learned.order == self.order else reordered(origin.pages, self.order, learned)
            side = origin_side(rule, book, "bucket", lister, LISTING, order=self.order)
            assert side is not None
            sides.append(side)
        return sides

    def union(self) -> dict[str, int]:
        """key -> the size listed for it (the store's bodies are 1 byte, each origin's its own)."""
        union: dict[str, int] = {}
        for rule, origin in zip(self.rules, self.origins, strict=True):
            where = OriginBucket.of(rule)
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
        origin_order: Order = draw(st.sampled_from(["s3", "path"]))  # its own, whatever the store's
        origins.append(FakeBucket({base + k for k in own | shared} | elsewhere, origin_order, size=2 + number))
    every_origin_key = sorted({k for o in origins for k in o.keys})
    hidden = draw(st.sets(st.sampled_from(every_origin_key), max_size=5)) if every_origin_key else set()
    hidden |= {k.split("/", 1)[-1] for k in hidden}  # with and without a base
    known = tuple(draw(st.booleans()) for _ in origins)
    return World(FakeBucket(store_keys, order), rules, origins, frozenset(hidden), known)


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
    listed = list_request(request, reading_of(request))
    if expected:
        assert listed is not None and (listed.version, listed.bucket) == expected
    else:
        assert listed is None
    request.method = "HEAD"
    assert list_request(request, reading_of(request)) is None


def test_virtual_hosted_listing():
    request = tutils.treq()
    request.url = "http://photos.s3.test/?list-type=2"
    request.headers["host"] = "photos.s3.test"
    assert list_request(request, reading_of(request, ("s3.test",))) == ListRequest(2, "photos")
    request.url = "http://photos.s3.test/key?list-type=2"
    assert list_request(request, reading_of(request, ("s3.test",))) is None


def reading_of(request, domains: tuple[str, ...] = ()) -> Reading:
    """The store's reading of a request to the store its URL names."""
    sent = SentRequest(request.scheme, request.host, request.port, (request.host_header or request.host,), request.path)
    found = read(sent, as_recorded(sent, Names((), frozenset(domains), domains)))
    assert isinstance(found, Reading)
    return found


def test_an_earlier_rule_and_the_rules_own_conditions_decide_which_keys_an_origin_gives():
    book = book_with([mirror(1, "http://h:9/one/", "docs/", ".md"), mirror(2, "http://h:9/two/")])
    first, second = (origin_side(rule, book, "bucket", FakeBucket(set()).lister, LISTING) for rule in book.rules_for("bucket"))
    assert first is not None and second is not None
    assert first.visible("docs/a.md") and not first.visible("docs/a.txt") and not first.visible("img/a.md")
    assert not second.visible("docs/a.md") and second.visible("docs/a.txt") and second.visible("img/a.md")
    assert not second.visible("a//b") and not second.visible("a/../b") and not second.visible("/a")
    slashes = mirror(1, "http://h:9/one/", MirrorPassOriginalSlashes=True)
    passing = origin_side(slashes, book_with([slashes]), "bucket", FakeBucket(set()).lister, LISTING)
    assert passing is not None and passing.visible("a//b")




# an origin read in the store's order, whatever its own ------------------------------------------


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.sets(st.text(alphabet="a/-.0", min_size=1, max_size=5), max_size=25),
       target=st.sampled_from(["s3", "path"]), own=st.sampled_from(["s3", "path"]), known=st.booleans(),
       delimiter=st.sampled_from(["", "/", "-"]), prefix=st.sampled_from(["", "a", "a/", "a-"]),
       start=st.one_of(st.just(""), st.text(alphabet="a/-.0", min_size=1, max_size=5)), page=st.integers(1, 4))
async def test_an_origin_in_either_order_is_read_in_the_stores(keys, target, own, known, delimiter, prefix, start, page):
    """reordered gives the origin's listing exactly as a side in the store's order lists it, from
    any start and in pages of any size, whether the origin's order is known, learned or never."""
    origin = FakeBucket(keys, own)
    learned = Learned("origin", own if known else None)
    lister = reordered(origin.pages, target, learned)
    got = [(e.key, e.is_prefix) async for e in lister(prefix, delimiter, start, page)]
    sort = sort_key(target)
    if delimiter == "/":
        expected = [(e.key, e.is_prefix) for e in model_items(keys, prefix, "/", "", target)
                    if sort(e.key) > sort(start) or (e.is_prefix and start.startswith(e.key))]
        holding_start = [(k, p) for k, p in got if p and start.startswith(k)]  # the merge checks it has a key after
        assert len(holding_start) <= 1 and [e for e in got if e not in holding_start] == [
            (k, p) for k, p in expected if not (p and start.startswith(k))]
    else:  # every key, for the merge to roll up
        assert got == [(k, False) for k in sorted(keys, key=sort) if k.startswith(prefix) and sort(k) > sort(start)]
    assert learned.order in (None, own)


@pytest.mark.parametrize(("store", "own"), [("path", "s3"), ("s3", "path")])
async def test_evidence_that_comes_late_drops_and_repeats_nothing(store, own):
    """The origin's keys hold no pair that tells its order until the last page; the store's key
    ends the first page where the two orders part (a page of one)."""
    world = World(FakeBucket({"a/a", "b"}, store), [mirror(1, "http://127.0.0.1:9/origin/")],
                  [FakeBucket({"a-x", "a.y", "a0", "z/1", "z-1"}, own)], known=(False,))
    query = {"list-type": "2", "max-keys": "1"}
    expected = world.expected(parse_params(query))
    listed = await page_through(world.page, query, store, max_pages=20)
    check_listing(listed, expected, store)
    assert world.learned[0].order == own  # z-1 and z/1 told it, at the end


@pytest.mark.parametrize("own", ["s3", "path"])
@pytest.mark.parametrize("folder", [True, False])
async def test_a_big_folder_waits_for_one_listing_not_for_its_end(own, folder):
    """Store in SeaweedFS order: x-0000 ... x-2999 wait for x/ (an origin in S3 order lists it
    after them); past LOOKAHEAD entries one listing of x/ settles it, so the first page of 10 reads
    a few hundred entries, not 3,000."""
    keys = {f"x-{i:04d}" for i in range(3000)} | ({"x/1"} if folder else set())
    origin = FakeBucket(keys, own)
    lister = reordered(origin.pages, "path", Learned("origin"))
    got: list[str] = []
    async with aclosing(lister("", "", "", 10)) as entries:
        async for entry in entries:
            got.append(entry.key)
            if len(got) == 10:
                break
    assert got == sorted(keys, key=sort_key("path"))[:10]
    assert origin.pulled < 3 * LOOKAHEAD
