"""The tombstones in force, one part shared by the child addons that use them: the Deletes child
opens them at configure (beside the spool, or in the store: backorigin_tombstones) and says
whether deletes stick; the merged listing, the metrics, the ledger and the commands read them."""

from __future__ import annotations

from backorigin.tombstones.tombstones import Tombstones


class TombstonesInForce:
    def __init__(self) -> None:
        self.stick = True  # backorigin_deletes=stick
        self.location: str | None = None  # where they live, None when deletes do not stick (the miss ledger says it)
        self._tombstones: Tombstones | None = None

    @property
    def tombstones(self) -> Tombstones:
        if self._tombstones is None:
            raise RuntimeError("the tombstones are opened at the first configure (deletes.deletes)")
        return self._tombstones

    @property
    def opened(self) -> bool:
        return self._tombstones is not None

    def use(self, tombstones: Tombstones, location: str, stick: bool) -> None:
        self._tombstones = tombstones
        self.stick = stick
        self.location = location if stick else None

    def count(self) -> int | None:
        """Tombstones kept, None when shared (not counted) or not opened yet."""
        return self._tombstones.count() if self._tombstones is not None else None
