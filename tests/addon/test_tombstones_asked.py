"""What tombstones cost the requests that ask them (issue 26, finding 9: every merged-listing page
and every metrics scrape went through all the tombstones): a page asks only the tombstones in its
own key range, and a scrape reads the count kept, listing none. Counted, with 20,000 tombstones."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import requests

from backorigin.listing.hiding import hide_tombstoned
from backorigin.listing.request import Entry
from backorigin.tombstones.journal import LocalTombstones, room_for
from backorigin.tools.embedded_store import free_ports

BUCKET, BASE = "b", "origin-root/"
MANY = 20_000


class CountedTombstones(LocalTombstones):
    """The proxy's own tombstones (a journal), counting what is asked of them."""

    def __init__(self, directory: Path, blocking: bool = False) -> None:
        super().__init__(directory)
        self.blocking = blocking  # True: asked as the shared kind is (pages of keys in order, from a thread)
        self.asked = self.listed = self.walks = 0

    def __contains__(self, ref: tuple[str, str]) -> bool:
        self.asked += 1
        return super().__contains__(ref)

    def keys(self, bucket: str, prefix: str = "", start_after: str = "", page: int | None = None) -> list[str]:
        found = super().keys(bucket, prefix, start_after, page)
        self.listed += len(found)
        return found

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.walks += 1
        return super().__iter__()


def buried(directory: Path, blocking: bool = False) -> CountedTombstones:
    """20,000 tombstones on either side of the keys m/0000-m/0099, and every tenth of those."""
    tombstones = CountedTombstones(directory, blocking)
    keys = [f"a/{i:06d}" for i in range(MANY // 2)] + [f"z/{i:06d}" for i in range(MANY // 2)]
    keys += [f"m/{i:04d}" for i in range(0, 100, 10)]
    intent = tombstones.reserve(BUCKET, None, room_for(BUCKET, None, 100 * len(keys)))
    tombstones.commit(intent, keys)
    return tombstones


async def origin_page(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[Any, None]:
    """An origin's listing of m/0040 to m/0059, as the merged listing asks its side (keys under BASE)."""
    for i in range(40, 60):
        yield Entry(f"{BASE}m/{i:04d}")


async def page_through(tombstones: CountedTombstones) -> list[str]:
    lister = hide_tombstoned(tombstones)(BUCKET, BASE, "s3", origin_page)
    return [entry.key async for entry in lister(f"{BASE}m/", "", f"{BASE}m/0039", 20)]


async def test_a_merged_listing_page_asks_only_the_tombstones_in_its_range(tmp_path):
    for blocking in (False, True):
        tombstones = buried(tmp_path / str(blocking), blocking)
        assert tombstones.count() == MANY + 10
        listed = await page_through(tombstones)
        assert listed == [f"{BASE}m/{i:04d}" for i in range(40, 60) if i % 10]  # m/0040 and m/0050 are hidden
        visited = tombstones.asked + tombstones.listed
        assert tombstones.walks == 0 and visited <= 2 * 20, f"{visited} tombstones visited for a page of 20 keys"


def test_a_metrics_scrape_reads_the_count_and_lists_no_tombstone(tctx, addon, tmp_path):
    tombstones = buried(tmp_path / "tombstones")
    addon.parts.tombstones.use(tombstones, str(tmp_path / "tombstones"), stick=True)  # the tombstones in force
    port = free_ports(1)[0]
    tctx.configure(addon, backorigin_metrics_port=port)
    scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert f"backorigin_tombstones {float(MANY + 10)}" in scraped.splitlines()
    assert (tombstones.walks, tombstones.listed, tombstones.asked) == (0, 0, 0)
