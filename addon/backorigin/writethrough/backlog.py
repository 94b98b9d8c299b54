"""The write-through worker's queue (pure): the journal's entries by key, so that one key is synced
by one thread at a time (a later write of a key never lands before an earlier one) and any number
of entries for a key are applied by one sync (of its latest state); keys of an origin bucket in the
order they were first written; an origin bucket that fails is paused as a whole, and a key that
fails alone backs off alone. Nothing is ever dropped: an entry leaves only once every key it names has been applied.

Keys are grouped in lanes, one per origin bucket (its endpoint, MirrorAuth key and bucket): what
fails together (the origin is down, refuses the key's signature, or lacks the bucket) pauses
together, so a backlog of a million keys behind a dead origin costs one attempt per bucket per
pause, not a million, and a bucket the origin refuses (a pattern entry's namesake not made yet)
holds up no other bucket. Lanes take turns, one key each (round robin): no bucket's backlog waits
behind another's.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Literal

from backorigin.writethrough.journal import Change, Entry

Lane = tuple[str, str, str]  # (origin endpoint, MirrorAuth AccessKeyId, origin bucket)
Scope = Literal["lane", "key"]  # what a failure is about: the origin bucket as a whole, or this key only
LANE_WAIT_MAX = 10.0  # seconds: the longest pause of a failing origin (as the miss path's circuit cooldown)
KEY_WAIT_MAX = 300.0  # seconds: the longest wait of a key the origin refuses alone


def lane_of(change: Change) -> Lane:
    return change.origin.endpoint, change.origin.access_key_id, change.origin.bucket


def backoff(failures: int, longest: float) -> float:
    """Exponential, from 1 s, with jitter (so that many proxies do not retry in step)."""
    return min(longest, 2.0 ** (failures - 1)) * random.uniform(0.5, 1.0)


class Backlog:
    def __init__(self) -> None:
        self._ready: dict[Lane, OrderedDict[Change, None]] = {}  # keys with entries to apply, by lane
        self._entries: dict[Change, list[Path]] = {}  # the entries naming each key that no sync has taken
        self._syncing: dict[Change, list[Path]] = {}  # the entries each sync under way applies
        self._remaining: dict[Path, int] = {}  # keys of each entry not applied yet
        self._later: list[tuple[float, int, Change]] = []  # keys waiting alone (a heap by time)
        self._waiting: set[Change] = set()  # the keys in _later
        self._paused: dict[Lane, float] = {}  # lanes paused until then
        self._lane_failures: Counter[Lane] = Counter()
        self._key_failures: Counter[Change] = Counter()
        self._tie = 0

    def __contains__(self, path: Path) -> bool:
        return path in self._remaining

    @property
    def entries(self) -> int:
        return len(self._remaining)

    @property
    def busy(self) -> int:
        return len(self._syncing)

    def add(self, entry: Entry) -> None:
        if entry.path in self._remaining:
            return
        changes = list(dict.fromkeys(entry.changes))
        self._remaining[entry.path] = len(changes)
        for change in changes:
            self._entries.setdefault(change, []).append(entry.path)
            if change not in self._waiting:
                self._ready.setdefault(lane_of(change), OrderedDict())[change] = None

    def arrived(self, change: Change) -> int:
        """The key's entries no sync has taken (counted from a sync's thread: one read of a list
        that only grows at its end while the key is being synced)."""
        return len(self._entries.get(change, ()))

    def take(self, now: float) -> tuple[Change, list[Path]] | None:
        """The next key to sync and the entries that sync applies; None when every key with entries
        is being synced, waiting, or in a paused lane."""
        self._wake(now)
        for lane, ready in self._ready.items():
            if self._paused.get(lane, 0.0) > now:
                continue
            for change in ready:
                if change in self._syncing:  # at most one per thread: a short skip
                    continue
                del ready[change]
                del self._ready[lane]
                if ready:  # its next key after every other lane's: lanes take turns
                    self._ready[lane] = ready
                taken = self._syncing[change] = self._entries.pop(change)
                return change, taken
        return None

    def applied(self, change: Change, taken: list[Path], also: int = 0) -> tuple[list[Path], list[Path]]:
        """The sync of `change` applied `taken` and the first `also` of its entries that arrived
        meanwhile: returns every entry it applied, and the entries now wholly applied (to remove)."""
        del self._syncing[change]
        lane = lane_of(change)
        self._lane_failures.pop(lane, None)
        self._paused.pop(lane, None)
        self._key_failures.pop(change, None)
        if also:
            later = self._entries[change]
            taken, self._entries[change] = taken + later[:also], later[also:]
            if not self._entries[change]:
                del self._entries[change]
                self._unready(change)
        done = []
        for path in taken:
            self._remaining[path] -= 1
            if not self._remaining[path]:
                del self._remaining[path]
                done.append(path)
        return taken, done

    def failed(self, change: Change, taken: list[Path], now: float, scope: Scope) -> float:
        """The sync of `change` failed: its entries wait again, in its lane (paused) or alone.
        Returns the seconds until it is tried again."""
        del self._syncing[change]
        self._entries[change] = taken + self._entries.get(change, [])
        lane = lane_of(change)
        if scope == "lane":
            self._lane_failures[lane] += 1
            delay = backoff(self._lane_failures[lane], LANE_WAIT_MAX)
            self._paused[lane] = now + delay
            ready = self._ready.setdefault(lane, OrderedDict())
            ready[change] = None
            ready.move_to_end(change, last=False)  # it was first: it stays first
            return delay
        self._key_failures[change] += 1
        delay = backoff(self._key_failures[change], KEY_WAIT_MAX)
        self._unready(change)  # written again while it was being synced: it waits all the same
        self._tie += 1
        heapq.heappush(self._later, (now + delay, self._tie, change))
        self._waiting.add(change)
        return delay

    def next_time(self) -> float | None:
        """When a key that cannot be taken now may be (a pause ends, a key's wait ends)."""
        times = [until for lane, until in self._paused.items() if lane in self._ready]
        if self._later:
            times.append(self._later[0][0])
        return min(times, default=None)

    def _unready(self, change: Change) -> None:
        lane = lane_of(change)
        ready = self._ready.get(lane)
        if ready is not None:
            ready.pop(change, None)
            if not ready:
                del self._ready[lane]

    def _wake(self, now: float) -> None:
        while self._later and self._later[0][0] <= now:
            _, _, change = heapq.heappop(self._later)
            self._waiting.discard(change)
            self._ready.setdefault(lane_of(change), OrderedDict())[change] = None
