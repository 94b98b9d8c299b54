"""Benchmark only (bench/state.py): at start, the addon's origin guard remembers 100,000 origin
404s of keys the benchmark never asks for, in its real NotFound, as if that many misses had
found nothing at the origin within the TTL."""

import logging

from mitmproxy import ctx

from backorigin.rules.targets import OriginRequest

COUNT = 100_000
logger = logging.getLogger(__name__)


class Remember404s:
    def running(self) -> None:
        addon = ctx.master.addons.get("backorigin")
        not_found = addon.parts.guard.not_found
        for i in range(COUNT):
            key = f"missing/{i:07d}"
            not_found.add("bench", key, OriginRequest(url=f"http://127.0.0.1/bench-listed/{key}", headers=()))
        logger.warning("remembered %d origin 404s", len(not_found))


addons = [Remember404s()]
