"""The merge of a listing's sides: the store's listing and each merged origin's, read lazily
in one key order, a page at a time (a page of 1000 entries never needs more than a page per side
in memory, whatever the size of the buckets). Pure: sides are async iterators given to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace

from backorigin.listing.order import ORDER_NAMES, Order, order_key, start_before
from backorigin.listing.request import (
    Entry,
    ListingError,
    ListParams,
    Page,
    decode_token,
    encode_token,
    parse_params,
    render,
    roll_up,
)

SIDE_PAGE = 1000  # entries asked of a side per page after its first
CHECK_PAGE = 10  # entries asked first when checking that a common prefix has a key to show

def next_page_size(previous: int) -> int:
    """Side pages grow from the client's page size: a page of 7 never waits for 1000 entries
    (SeaweedFS takes ~30 times longer for those than for 8)."""
    return max(1, min(SIDE_PAGE, previous * 2))



# (prefix, delimiter, start_after, first_page_size) -> the side's entries (objects and common
# prefixes, as its own listing rolls them up) in the side's key order, strictly after start_after
# ("" for none), fetched a page at a time; the first page asks for `first_page_size` entries, the
# next ones for twice as many as the one before, up to 1000 (see next_page_size).
Lister = Callable[[str, str, str, int], AsyncGenerator[Entry, None]]


@dataclass(frozen=True)
class Side:
    """One source of entries, its keys mapped to the bucket's.

    `base` is prepended to a bucket key to give the side's key (an origin's MirrorURL prefix);
    only bucket keys starting with `key_prefix` can come from this side; an object is listed when
    `accepts` (None: always) and not `hidden`. With `filtered`, a common prefix the side lists is
    shown only once a key under it passes those checks (asked lazily: not when the store, or
    another side that needs no check, lists the same common prefix)."""

    lister: Lister
    name: str = "store"
    order: Order = "s3"
    base: str = ""
    key_prefix: str = ""
    accepts: Callable[[str], bool] | None = None
    hidden: Callable[[str], bool] = field(default=lambda key: False)
    filtered: bool = False

    def visible(self, key: str) -> bool:
        return (self.accepts is None or self.accepts(key)) and not self.hidden(key)



Check = Callable[[], Awaitable[bool]]  # whether a common prefix has a key to show under it
Candidate = tuple[Entry, Check | None]  # None: nothing left to check


class _SideReader:
    """One side's entries for one listing, in bucket keys, rolled up relative to the listing's
    prefix, filtered by the side's rules, common prefixes deduplicated."""

    def __init__(self, side: Side, params: ListParams, page_size: int, order: Order) -> None:
        self.side = side
        self.params = params
        self.page_size = page_size
        self.order = order
        self.sort = order_key(order)

    def _raw(self, prefix: str, delimiter: str, page_size: int) -> AsyncGenerator[Entry, None]:
        """The side's entries after the page's start; an origin's from a little before it, so that
        no origin skips a folder the store's key names (order.start_before): _mapped drops the
        keys before the start, and the common prefixes it lists are checked (Side.filtered)."""
        after = self.side.base + self.params.after if self.params.after else ""
        return self.side.lister(self.side.base + prefix, delimiter, start_before(after) if self.side.filtered else after, page_size)

    async def _mapped(self, prefix: str, delimiter: str, page_size: int) -> AsyncGenerator[Entry, None]:
        """The side's raw entries with bucket keys, checked to come in the merge's order."""
        previous: str | None = None
        base = self.side.base
        start = base + self.params.after if self.params.after else None
        async with aclosing(self._raw(prefix, delimiter, page_size)) as raw:
            async for entry in raw:
                if not entry.key.startswith(base + prefix):
                    raise ListingError(502, "InternalError", f"{self.side.name} listed {entry.key!r} outside {base + prefix!r}")
                if start is not None and self.sort(entry.key) <= self.sort(start) and not (
                        entry.is_prefix and start.startswith(entry.key)):
                    continue  # read from a little before the start (see _raw)
                if previous is not None and self.sort(entry.key) < self.sort(previous):
                    raise ListingError(
                        501, "NotImplemented",
                        f"{self.side.name} listed {entry.key!r} after {previous!r}, not in {self.order} order: a merged "
                        "listing needs the store and every S3 origin to list keys in the same order",
                    )
                previous = entry.key
                yield replace(entry, key=entry.key[len(base):])

    def _check(self, prefix: str) -> Check:
        """Whether some key under `prefix` (after the page's start) passes the side's filters."""

        async def has_visible() -> bool:
            async with aclosing(self._mapped(prefix, "", CHECK_PAGE)) as entries:
                async for entry in entries:
                    if not entry.is_prefix and self.side.visible(entry.key):
                        return True
            return False

        return has_visible

    async def entries(self) -> AsyncGenerator[Candidate, None]:
        q, d = self.params.prefix, self.params.delimiter
        rule_prefix = self.side.key_prefix
        if q.startswith(rule_prefix):
            listed = q
        elif rule_prefix.startswith(q):
            listed = rule_prefix  # the rule narrows the listing
        else:
            return  # no key under the listing's prefix can come from this side
        if d and listed != q:
            at = rule_prefix.find(d, len(q))
            if at != -1:  # every key of this side rolls up into one common prefix
                yield Entry(rule_prefix[: at + len(d)], is_prefix=True), self._check(rule_prefix)
                return
        emitted: str | None = None  # the last common prefix yielded
        async with aclosing(self._mapped(listed, d, self.page_size)) as entries:
            async for entry in entries:
                rolled = roll_up(entry.key, q, d)
                if rolled is None:
                    if not entry.is_prefix and self.side.visible(entry.key):
                        yield entry, None
                    continue
                if rolled == emitted:
                    continue
                emitted = rolled
                if not self.side.filtered or (not entry.is_prefix and self.side.visible(entry.key)):
                    yield Entry(rolled, is_prefix=True), None
                else:  # rolled may be longer than the side's own common prefix (a delimiter across the rule's prefix)
                    yield Entry(rolled, is_prefix=True), self._check(rolled if rolled.startswith(listed) else listed)


def start_skips(params: ListParams) -> str | None:
    """What every entry of the page must sort after: the start itself when it is a key or a whole
    common prefix (the last entry of a previous page); None when it lies inside a common prefix,
    which S3 still lists (it has keys after the start)."""
    after = params.after
    if not after:
        return None
    rolled = roll_up(after, params.prefix, params.delimiter) if after.startswith(params.prefix) else None
    return after if rolled in (None, after) else None


async def merge_page(params: ListParams, sides: Sequence[Side], order: Order | None = None) -> Page:
    """One page of the merged listing. `sides[0]` wins a key several sides have (the store);
    `params.after` is where the page starts (exclusive; a continuation token already decoded)."""
    if params.max_keys == 0 or not sides:
        return Page((), False)
    order = order or sides[0].order
    for side in sides:
        if side.order != order:
            raise ListingError(
                501, "NotImplemented",
                f"{side.name} lists keys in {side.order} order, the store in {order} order ({ORDER_NAMES[order]}); a merged "
                "listing needs the same order on every side",
            )
    sort = order_key(order)
    wanted = params.max_keys
    skip = start_skips(params)
    chosen: list[Entry] = []
    async with AsyncExitStack() as stack:
        readers = [
            await stack.enter_async_context(aclosing(_SideReader(side, params, min(SIDE_PAGE, wanted + 1), order).entries()))
            for side in sides
        ]
        heads: list[Candidate | None] = list(await asyncio.gather(*(anext(r, None) for r in readers)))
        while True:  # ends: every pass takes at least one entry off a side, or all are done
            live = [(sort(head[0].key), i) for i, head in enumerate(heads) if head is not None]
            if not live:
                return Page(tuple(chosen), False)
            first = min(live)[0]
            tied = [head for head in heads if head is not None and sort(head[0].key) == first]
            entry = tied[0][0]
            skipped = skip is not None and first <= sort(skip)
            shown = skipped or any(check is None for _, check in tied) or await _any_passes(tied)
            if shown and not skipped and len(chosen) == wanted:
                return Page(tuple(chosen), True)  # before the sides move on: no page is fetched for nothing
            for value, i in live:
                if value == first:
                    heads[i] = await anext(readers[i], None)
            if skipped or not shown:
                continue
            chosen.append(entry)
            skip = entry.key


async def _any_passes(tied: Sequence[Candidate]) -> bool:
    for _, check in tied:
        if check is not None and await check():
            return True
    return False



async def merged_listing(
    request_query: Mapping[str, str], bucket: str, store_lister: Lister | Side, origin_listers: Sequence[Side],
    hidden: Callable[[str], bool] | None = None, version: int | None = None,
) -> bytes:
    """The merged page a ListObjectsV2 (list-type=2) or ListObjects query asks for, as XML.

    `store_lister` lists the bucket itself (a Lister, taken to list in S3 order, or a Side);
    `origin_listers` are the origins' sides (see `origin_side`), in RuleNumber order; `hidden`
    hides origin keys (tombstones). Raises ListingError for a request S3 would refuse."""
    params = parse_params(request_query, version)
    if params.continuation:
        params = replace(params, after=decode_token(params.continuation, params))
    store = store_lister if isinstance(store_lister, Side) else Side(store_lister)
    origins = [replace(side, hidden=hidden) if hidden is not None else side for side in origin_listers]
    page = await merge_page(params, [store, *origins], store.order)
    token = encode_token(params, page.entries[-1].key) if page.truncated and params.version == 2 else ""
    return render(bucket, params, page, token)



