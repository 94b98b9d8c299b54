"""The parts the child addons of BackOrigin share, built once with it and handed to each child that
uses them when the child is made: the order is the construction's, and no child reaches into
another or patches a callback onto another's object. Each part is told what it must tell when it
is made: the origin client tells the guard of every answer (its circuits), the write-back tells the
mirror's objects of every write-back that ended, the mirror tells the measures of every fetch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backorigin.miss.guard import OriginGuard
from backorigin.miss.leases import Leases
from backorigin.miss.mirror import Mirror
from backorigin.miss.mirroredobjects import MirroredObjects
from backorigin.miss.origin import OriginClient
from backorigin.tombstones.tombstonesinforce import TombstonesInForce
from backorigin.ui.metrics import Measures
from backorigin.writeback.supervisor import WriteBackSupervisor


@dataclass(frozen=True)
class Parts:
    guard: OriginGuard  # the origins' 404s remembered, fetches at once, circuits (miss.originprotection configures it)
    leases: Leases  # turns taken with the fleet's other proxies (miss.fleetleases configures them)
    writeback: WriteBackSupervisor  # the spool and its worker (miss.mirroring opens and starts it)
    mirror: Mirror  # one fill per missed object, answered from the fill, stored through the write-back
    tombstones: TombstonesInForce  # keys deleted through the proxy (deletes.deletes opens them)
    measures: Measures  # what the metrics endpoint serves, observed as it happens

    @classmethod
    def build(cls, own_listeners: Callable[[], Iterable[tuple[str, int]]]) -> Parts:
        """`own_listeners()`: where this process listens (origin fetches never go there)."""
        guard, leases, measures = OriginGuard(), Leases(), Measures()
        objects = MirroredObjects(leases)
        writeback = WriteBackSupervisor(landed=objects.landed)
        origin = OriginClient(observe=guard.observe, own_listeners=own_listeners)
        mirror = Mirror(origin, writeback, guard, objects, on_fetched=measures.fetched)
        return cls(guard, leases, writeback, mirror, TombstonesInForce(), measures)
