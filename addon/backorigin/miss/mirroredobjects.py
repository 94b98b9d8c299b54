"""What a mirror keeps track of from a miss until its write-back has ended: the fills (miss.fill),
the objects the store has (miss.probe's ExistenceCache), those it refused for good, and the
fleet's leases the fills hold (miss.leases). Made before the write-back, which tells it of every
write-back that ended (`landed`)."""

from __future__ import annotations

from collections import OrderedDict

from backorigin.miss.fill import Fill, Fills
from backorigin.miss.leases import Leases
from backorigin.miss.probe import ExistenceCache
from backorigin.s3.addressing import ObjectKey
from backorigin.writeback.spool import ObjectUpload, WriteBackOutcome

REFUSED_KEPT = 10_000  # objects the store refused for good, remembered (the oldest are forgotten)


class MirroredObjects:
    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.fills = Fills()
        self.known = ExistenceCache()  # objects the store has: their requests go straight to it
        self.refused: OrderedDict[ObjectKey, str] = OrderedDict()  # objects the store refused for good, and why

    def landed(self, upload: ObjectUpload, outcome: WriteBackOutcome, detail: str) -> None:
        """A write-back ended (writeback.supervisor's `landed`): its fill is let go, its object is known stored or refused."""
        key = upload.object_key
        if outcome in ("failed", "refused"):  # served from the origin from now on, not stored and refused again
            self.refused[key] = detail or "refused"
            while len(self.refused) > REFUSED_KEPT:
                self.refused.popitem(last=False)
        stored = outcome in ("stored", "exists")
        fill = self.fills.get(key)
        if fill is not None and fill.settled is not None:
            fill.landed.set()
            self.drop(fill, stored)
        if stored:
            self.known.add(key)

    def drop(self, fill: Fill, stored: bool = False) -> None:
        """No new miss joins `fill`, and its lease is let go: its object is `stored`, or was given up."""
        self.fills.drop(fill)
        if fill.lease is not None:
            self.leases.release(fill.lease, stored)
            fill.lease = None
