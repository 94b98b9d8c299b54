"""Helpers for the listing tests (tests/unit and tests/e2e test_listing.py): S3 listing semantics as a plain model, fake listers
built on it, and paging through merged listings (the XML the proxy answers) to the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote
from xml.etree import ElementTree

from backorigin.listing.merge import Lister, next_page_size
from backorigin.listing.order import Order, PageLister
from backorigin.listing.request import NAMESPACE, Entry

NS = {"s3": NAMESPACE}


def sort_key(order: Order) -> Callable[[str], Any]:
    """The model's own key orders: S3's is the UTF-8 bytes; SeaweedFS's compares path components."""
    if order == "path":
        return lambda key: tuple(part.encode() for part in key.split("/"))
    return lambda key: key.encode()


def roll(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter or delimiter not in key[len(prefix):]:
        return None
    return key[: key.index(delimiter, len(prefix)) + len(delimiter)]


def model_items(keys: Iterable[str], prefix: str, delimiter: str, after: str, order: Order,
                entry: Callable[[str], Entry] = Entry) -> list[Entry]:
    """What S3 lists for these keys: objects under `prefix` after `after` in `order`, rolled up
    into common prefixes at the first `delimiter` after the prefix (one per prefix)."""
    sort = sort_key(order)
    items: list[Entry] = []
    for key in sorted(set(keys), key=sort):
        if not key.startswith(prefix) or (after and sort(key) <= sort(after)):
            continue
        rolled = roll(key, prefix, delimiter)
        if rolled is None:
            items.append(entry(key))
        elif not items or items[-1].key != rolled:
            items.append(Entry(rolled, is_prefix=True))
    return items


@dataclass
class FakeBucket:
    """A bucket listed as S3 lists it, a page at a time; counts what it hands out."""

    keys: Iterable[str]
    order: Order = "s3"
    size: int = 1
    pulled: int = 0
    calls: list[tuple[str, str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = sorted(set(self.keys), key=sort_key(self.order))

    def entry(self, key: str) -> Entry:
        return Entry(key, size=self.size, etag=f'"{self.size}"', last_modified="2025-01-01T00:00:00.000Z")

    @property
    def lister(self) -> Lister:
        async def entries(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[Entry, None]:
            self.calls.append((prefix, delimiter, start_after, first_page))
            page, left = first_page, first_page
            for item in model_items(self.keys, prefix, delimiter, start_after, self.order, self.entry):
                if not left:
                    await asyncio.sleep(0)  # a page boundary: another request
                    page = left = next_page_size(page)
                left -= 1
                self.pulled += 1
                yield item

        return entries

    @property
    def pages(self) -> PageLister:
        """The same listing a page at a time, each page as S3 answers it: its objects, then its common prefixes."""
        async def pages(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[list[Entry], None]:
            self.calls.append((prefix, delimiter, start_after, first_page))
            items = model_items(self.keys, prefix, delimiter, start_after, self.order, self.entry)
            at, size = 0, first_page
            while at < len(items):
                page = items[at:at + size]
                self.pulled += len(page)
                yield [e for e in page if not e.is_prefix] + [e for e in page if e.is_prefix]
                at, size = at + size, next_page_size(size)
            if not items:
                yield []

        return pages


@dataclass
class Listed:
    """Every page of one listing, followed to its end."""

    entries: list[Entry] = field(default_factory=list)
    pages: list[ElementTree.Element] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.entries if not e.is_prefix]

    @property
    def prefixes(self) -> list[str]:
        return [e.key for e in self.entries if e.is_prefix]


def parse_page(xml: bytes) -> tuple[ElementTree.Element, list[Entry]]:
    """A ListBucketResult's entries, url-decoded when EncodingType is url, Contents then CommonPrefixes."""
    root = ElementTree.fromstring(xml)
    encoded = root.findtext("s3:EncodingType", "", NS) == "url"

    def text(value: str | None) -> str:
        return unquote(value or "") if encoded else value or ""

    entries = [Entry(text(c.findtext("s3:Key", None, NS)), size=int(c.findtext("s3:Size", "0", NS)),
                     etag=c.findtext("s3:ETag", "", NS), last_modified=c.findtext("s3:LastModified", "", NS))
               for c in root.findall("s3:Contents", NS)]
    entries += [Entry(text(p.findtext("s3:Prefix", None, NS)), is_prefix=True) for p in root.findall("s3:CommonPrefixes", NS)]
    return root, entries


async def page_through(fetch: Callable[[Mapping[str, str]], Awaitable[bytes]], query: Mapping[str, str],
                       order: Order, max_pages: int) -> Listed:
    """Follow NextContinuationToken (v2) or NextMarker (v1) until IsTruncated is false; checks
    each page's own consistency (KeyCount, max-keys, entries in order, a token when truncated)."""
    sort = sort_key(order)
    listed = Listed()
    query = dict(query)
    max_keys = min(int(query.get("max-keys", "1000")), 1000)
    for _ in range(max_pages):
        root, entries = parse_page(await fetch(query))
        listed.pages.append(root)
        listed.entries.extend(sorted(entries, key=lambda e: sort(e.key)))
        assert len(entries) <= max_keys
        if query.get("list-type") == "2":
            assert int(root.findtext("s3:KeyCount", "-1", NS)) == len(entries)
        if root.findtext("s3:IsTruncated", None, NS) != "true":
            return listed
        assert entries, "a truncated page with nothing in it"
        if query.get("list-type") == "2":
            query["continuation-token"] = root.findtext("s3:NextContinuationToken", "", NS)
            assert query["continuation-token"]
        else:
            next_marker = root.findtext("s3:NextMarker", "", NS)
            query["marker"] = unquote(next_marker) if root.findtext("s3:EncodingType", "", NS) == "url" else next_marker
    raise AssertionError(f"still truncated after {max_pages} pages")
