"""Key orders, learned from what each side lists, and an origin read in the store's order
whatever its own.

Two orders are in use. S3 (and OSS, MinIO, Ceph) lists keys in UTF-8 binary order; SeaweedFS
lists them folder by folder, which is binary order with '/' sorting before every other
character. They disagree exactly on a pair of keys that share a beginning `p` and then go on,
one with '/', the other with a character below '/' (space ! " # $ % & ' ( ) * + , - .): S3 lists
`a-b`, `a.b`, `a/b`, `a0`; SeaweedFS `a/b`, `a-b`, `a.b`, `a0`. A merged listing answers in
the store's order, so it must know the store's, and read each origin in it.

The store's order is asked, not guessed (never from a Server header, which a front hides or
rewrites): the proxy writes two empty objects that differ in the two orders, create-only, under
a name of its own with a random part (`.backorigin-order-probe-<random>-` and
`.backorigin-order-probe-<random>/x`, in the bucket being listed, which the proxy writes back to
anyway), lists them, and deletes them (and the folder SeaweedFS made for the second). Proxies
probing at once never see each other's objects; a client listing that bucket directly at that
moment may see them for the few milliseconds they exist. See sources.probe_order.

An origin may be read-only, so its order is learned from its own pages (`Learned`): a page, or
two pages one after the other, holding two entries in an order only one of the two orders
allows is evidence, and settles it. Evidence may come late or never (an origin whose keys hold
no such pair). The merge must then never drop or repeat a key, whatever the truth turns out to
be, and a page must never depend on a guess: a listing that assumed the store's order and was
wrong would hand a continuation token that skips keys on the next page (the origin's
`start-after` is read in the origin's order) with no way to notice. So:

- An origin known to list in the store's order is read as it lists (flat, a page at a time).
- Any other origin, one not yet known included, is read by `reordered`, which yields the store's
  order from either order without assuming which. It walks the origin folder by folder
  (listings with delimiter '/'), and within a folder holds back an entry only while an entry
  not yet read could still come before it in the store's order under an order not ruled out:
  * store in S3 order: a common prefix `p/` waits until the listing has passed every `p` +
    (character below '/') entry, which an origin in SeaweedFS order lists right after it;
  * store in SeaweedFS order: an entry `p` + (character below '/') + ... waits for `p/`, which
    an origin in S3 order lists after it; when the wait grows long (a big folder), one
    listing of `p/` (a key or not) settles it.
  Where a page starts (after a key or a common prefix of the page before) is given to the
  origin as a `start-after` that lies before that point in both orders, and whatever comes
  before the point is dropped here, so no key is skipped; the common prefixes that an origin
  in SeaweedFS order would place before the point but S3 places after it are asked for one by
  one. Every page is thus right on its own, and evidence only makes later pages cheaper (flat).
- A page whose entries fit neither order (a store with an order of its own) fails with 501.

`start-after` is also never a name SeaweedFS would skip a whole folder for (it reads
`start-after=p` as "after the folder p too"): see `start_before`.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal

from backorigin.listing.request import Entry, ListingError

logger = logging.getLogger(__name__)

Order = Literal["s3", "path"]
ORDERS: tuple[Order, Order] = ("s3", "path")
ORDER_NAMES = {"s3": "UTF-8 binary order, as S3", "path": "'/' before every other character, as SeaweedFS"}
SLASH = "/"
LOOKAHEAD = 256  # entries held back in one folder before one listing settles what they wait for
LAST = "\U0010ffff"  # the greatest character: "p" + LAST sorts after every key under "p" but p's own

# (prefix, delimiter, start_after, first_page_size) -> the listing's pages, each as the side lists
# it (its objects, then its common prefixes), in the side's own order, whatever that is.
PageLister = Callable[[str, str, str, int], AsyncGenerator[list[Entry], None]]


def order_key(order: Order) -> Callable[[str], str]:
    """A sort key for `order`: 's3' is UTF-8 binary order (Python compares code points, which
    sorts as UTF-8 bytes do); 'path' sorts '/' before every other character (SeaweedFS)."""
    if order == "path":
        return lambda key: key.replace(SLASH, "\0")
    return lambda key: key


def start_before(key: str) -> str:
    """A start-after that lies before `key` in both orders and makes no store skip a folder: the
    key with its last character lowered, then LAST. The entries between it and `key` are read and
    dropped by the caller; only keys holding LAST itself could be missed."""
    if not key or key.endswith(SLASH):
        return key
    lowered = chr(ord(key[-1]) - 1) if ord(key[-1]) > 1 else ""
    return key[:-1] + ("." if lowered == SLASH else lowered) + LAST


def below_slash(key: str, node: str) -> bool:
    """`key` is `node` followed by a character that sorts before '/' in S3's order."""
    return len(key) > len(node) and key.startswith(node) and key[len(node)] < SLASH


@dataclass
class Learned:
    """What is known of one side's order; `see` learns it from the pages it lists."""

    name: str
    order: Order | None = None

    def possible(self) -> Sequence[Order]:
        return ORDERS if self.order is None else (self.order,)

    def see(self, page: Sequence[Entry], before: dict[Order, str]) -> None:
        """Learn from one page of a listing; `before` holds, per order, the greatest key the
        listing gave before this page (updated here)."""
        fits = [order for order in ORDERS if _fits(page, order, before.get(order))]
        for order in ORDERS:
            sort = order_key(order)
            greatest = max((entry.key for entry in page), key=sort, default=None)
            if greatest is not None and (order not in before or sort(greatest) > sort(before[order])):
                before[order] = greatest
        if not fits:
            raise ListingError(501, "NotImplemented", f"{self.name} lists keys in neither S3's order nor SeaweedFS's: "
                               "a merged listing needs one of them")
        if len(fits) == 1 and fits[0] != self.order:
            logger.info("%s lists keys in %s", self.name, ORDER_NAMES[fits[0]])
            self.order = fits[0]


def _fits(page: Sequence[Entry], order: Order, before: str | None) -> bool:
    """The page's objects, and its common prefixes, each in `order` and after what came before."""
    sort = order_key(order)
    for kind in (False, True):
        keys = [sort(entry.key) for entry in page if entry.is_prefix is kind]
        if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
            return False
    return before is None or all(sort(entry.key) > sort(before) for entry in page)


def reordered(pages: PageLister, target: Order, learned: Learned) -> Callable[..., AsyncGenerator[Entry, None]]:
    """A merge.Lister giving a side's entries in `target` order, whether the side lists in it or
    not, and whether that is known yet or not (see the module)."""

    async def entries(prefix: str, delimiter: str, start_after: str, first_page: int) -> AsyncGenerator[Entry, None]:
        walk = _Walk(pages, target, learned, first_page)
        async with aclosing(walk.tree(prefix, start_after, expand=delimiter != SLASH)) as found:
            async for entry in found:
                yield entry

    return entries


@dataclass
class _Walk:
    pages: PageLister
    target: Order
    learned: Learned
    page_size: int

    async def tree(self, prefix: str, after: str, expand: bool) -> AsyncGenerator[Entry, None]:
        """The entries under `prefix` after `after` in target order: the folder's own (a common
        prefix per subfolder) or, with `expand`, every key."""
        sort = order_key(self.target)
        start: str | None = None  # the entry of this folder the walk resumes after
        inside = False  # `after` lies under that entry, a subfolder
        if after and after.startswith(prefix):
            rest = after[len(prefix):]
            slash = rest.find(SLASH)
            start, inside = (prefix + rest[:slash + 1], True) if slash >= 0 else (after, False)
        elif sort(after) > sort(prefix):
            return  # every key under the prefix comes before `after`
        if inside and start is not None:
            if expand:
                async with aclosing(self.tree(start, after, expand)) as under:
                    async for entry in under:
                        yield entry
            else:
                yield Entry(start, is_prefix=True)  # the merge checks it has a key after `after`
        async with aclosing(self.folder(prefix, start)) as found:
            async for entry in found:
                if entry.is_prefix and expand:
                    async with aclosing(self.tree(entry.key, "", expand)) as under:
                        async for key in under:
                            yield key
                else:
                    yield entry

    async def folder(self, prefix: str, start: str | None) -> AsyncGenerator[Entry, None]:
        """The entries of one folder (delimiter '/') after `start`, in target order."""
        held = _Held(self, prefix, start)
        if start is not None and self.target == "s3" and "path" in self.learned.possible():
            await held.ask_prefixes_placed_before(start)
        name = (start or "").removesuffix(SLASH)  # where the folder resumes, as a key of it: before it in both orders
        origin_start = start_before(name) if len(name) > len(prefix) else ""
        before: dict[Order, str] = {}
        async with aclosing(self.pages(prefix, SLASH, origin_start, self.page_size)) as raw:
            async for page in raw:
                self.learned.see(page, before)
                held.read(page, before)
                async for entry in held.release(final=False):
                    yield entry
        async for entry in held.release(final=True):
            yield entry

    async def exists(self, prefix: str) -> bool:
        async with aclosing(self.pages(prefix, "", "", 1)) as raw:
            async for page in raw:
                if page:
                    return True
        return False


class _Held:
    """One folder's entries read but not yet given, in target order (a heap), and what decides
    whether the first of them may go (see the module)."""

    def __init__(self, walk: _Walk, prefix: str, start: str | None) -> None:
        self.walk, self.prefix = walk, prefix
        self.sort = order_key(walk.target)
        self.floor = self.sort(start) if start is not None else None  # what is given must sort after it
        self.heap: list[tuple[str, str]] = []
        self.entries: dict[str, Entry] = {}
        self.settled: dict[str, bool] = {}  # common prefixes asked for: whether the origin has them
        self.greatest: dict[Order, str] = {}

    def add(self, entry: Entry) -> None:
        value = self.sort(entry.key)
        if (self.floor is None or value > self.floor) and entry.key not in self.entries:
            self.entries[entry.key] = entry
            heapq.heappush(self.heap, (value, entry.key))

    def read(self, page: Sequence[Entry], greatest: dict[Order, str]) -> None:
        self.greatest = greatest
        for entry in page:
            self.add(entry)

    async def ask_prefixes_placed_before(self, start: str) -> None:
        """Store in S3 order, resuming after `start`: the common prefixes `p/` (p = start up to a
        character below '/') follow `start` in S3's order but precede it in SeaweedFS's, so a
        start-after would not bring them from an origin in that order: each is asked for."""
        for at in range(len(self.prefix), len(start)):
            if start[at] < SLASH and await self.walk.exists(start[:at] + SLASH):
                self.add(Entry(start[:at] + SLASH, is_prefix=True))

    async def release(self, final: bool) -> AsyncGenerator[Entry, None]:
        while self.heap:
            key = self.heap[0][1]
            if not final:
                waits_for = self._waits_for(key)
                if waits_for is not None:
                    if waits_for == "" or len(self.entries) < LOOKAHEAD:
                        return  # read on
                    self.settled[waits_for] = found = await self.walk.exists(waits_for)
                    if found:
                        self.add(Entry(waits_for, is_prefix=True))
                    continue
            heapq.heappop(self.heap)
            self.floor = self.sort(key)
            yield self.entries.pop(key)

    def _waits_for(self, key: str) -> str | None:
        """None: `key` may go. Else what it waits for: a common prefix to be read or asked for
        (store in SeaweedFS order), or "" (store in S3 order: more of the folder to be read)."""
        possible = self.walk.learned.possible()
        if self.walk.target == "s3":
            return "" if any(self._unread_before(key, order) for order in possible) else None
        if "s3" not in possible:
            return None
        last = self.greatest.get("s3", "")
        for at in range(len(self.prefix), len(key)):
            if key[at] < SLASH:
                folder = key[:at] + SLASH
                if folder not in self.settled and last < folder and (self.floor is None or self.sort(folder) > self.floor):
                    return folder
        return None

    def _unread_before(self, key: str, order: Order) -> bool:
        """Store in S3 order, the origin listing in `order`: whether an entry not read yet may still
        sort before `key`. Only an entry asked for (not read) can be ahead of the listing; in
        SeaweedFS order, a common prefix `p/` is followed by the `p` + (character below '/') entries."""
        last = self.greatest.get(order, "")
        sort = order_key(order)
        if sort(last) < sort(key):
            return True
        return order == "path" and key.endswith(SLASH) and (last == key or below_slash(last, key[:-1]))
