"""Experiment, not part of the addon: load after the addon to see what Python's cyclic garbage
collector costs the proxy (python -m bench --only state --keep --with-script bench/experiments/gc_stats.py;
each mitmdump's log, in the kept folder, then has a line every 10 s).

Per generation: how many collections ran, the time they took, and how many objects the GC tracks
(a full collection visits every one of them, and every item of every tracked container)."""

import gc
import logging
import time

logger = logging.getLogger(__name__)


class GcStats:
    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._began = 0.0
        self._logged = time.monotonic()

    def running(self) -> None:
        gc.callbacks.append(self._heard)

    def _heard(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        generation = info["generation"]
        self.count[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._began
        if time.monotonic() - self._logged >= 10:
            self._logged = time.monotonic()
            logger.warning("gc: collections %s, ms %s, tracked objects %d", self.count,
                           [round(s * 1000) for s in self.seconds], len(gc.get_objects()))


addons = [GcStats()]
