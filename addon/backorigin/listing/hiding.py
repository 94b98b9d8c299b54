"""A merged listing less the keys deleted through the proxy (tombstones.tombstones): origins do
not know of those deletes, so an origin's side of the merge leaves them out as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from backorigin.listing.merge import Lister
from backorigin.listing.order import Order, order_key
from backorigin.tombstones.tombstones import Tombstones
from backorigin.tombstones.tombstonesinforce import TombstonesInForce

Hide = Callable[[str, str, Order, Lister], Lister]  # (bucket, base, order, an origin's lister) -> the lister less tombstones


def hide_tombstoned(tombstones: Tombstones) -> Hide:
    """What a merged listing does to an origin side's lister (its keys are `base` + the bucket's
    key): the keys with a tombstone are left out as they come, each asked in O(1) (the local
    kind), or checked against the store's tombstones listed from the same start in the same order
    as far as the origin's keys go, never further (the shared kind)."""

    def hide(bucket: str, base: str, order: Order, lister: Lister) -> Lister:
        async def entries(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[Any, None]:
            holds = _Cursor(tombstones, bucket, prefix[len(base):], start_after[len(base):], order, first_page)
            async with aclosing(lister(prefix, delimiter, start_after, first_page)) as listed:
                async for entry in listed:
                    if entry.is_prefix or not entry.key.startswith(base) or not await holds(entry.key[len(base):]):
                        yield entry

        return entries

    return hide


class _Cursor:
    """Whether keys asked in the listing's order have tombstones."""

    def __init__(self, tombstones: Tombstones, bucket: str, prefix: str, start_after: str, order: Order, page: int) -> None:
        self.tombstones, self.bucket, self.prefix, self.after = tombstones, bucket, prefix, start_after
        self.sort = order_key(order)
        self.page = max(1, min(1000, page))
        self.window: list[str] = []  # the last page of tombstones listed, in order
        self.at = 0  # the first of them not passed yet by the keys asked
        self.done = False

    async def __call__(self, key: str) -> bool:
        if not self.tombstones.blocking:
            return (self.bucket, key) in self.tombstones
        wanted = self.sort(key)
        while True:
            while self.at < len(self.window) and self.sort(self.window[self.at]) < wanted:
                self.at += 1
            if self.at < len(self.window) or self.done:
                return self.at < len(self.window) and self.window[self.at] == key
            listed = await asyncio.to_thread(self.tombstones.keys, self.bucket, self.prefix, self.after, self.page)
            self.done = len(listed) < self.page
            self.page = min(1000, self.page * 2)
            self.window, self.at = listed, 0
            if listed:
                self.after = listed[-1]


def hide_in_force(in_force: TombstonesInForce) -> Hide:
    """hide_tombstoned over the tombstones in force, while deletes stick; else listers pass as they are."""
    def hide(bucket: str, base: str, order: Order, lister: Lister) -> Lister:
        return hide_tombstoned(in_force.tombstones)(bucket, base, order, lister) if in_force.stick else lister
    return hide
