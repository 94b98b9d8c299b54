"""Benchmark only (scenario 10, bench/scenarios/state): loaded with -s after the addon, it fills the
addon's origin guard with `bench_remembered_404s` origin 404s at start, in its real NotFound, of
keys the benchmark never asks for, as if that many misses had found nothing at the origin within
the TTL (the scenario sets backorigin_origin_404_ttl longer than it runs)."""

import logging

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader

from backorigin.rules.targets import OriginRequest

logger = logging.getLogger(__name__)


class Remember404s:
    def load(self, loader: Loader) -> None:
        loader.add_option("bench_remembered_404s", int, 0, "Origin 404s to remember at start (benchmark only).")
        loader.add_option("bench_remembered_404s_bucket", str, "bench", "Their bucket.")

    def running(self) -> None:
        count, bucket = ctx.options.bench_remembered_404s, ctx.options.bench_remembered_404s_bucket
        addon = ctx.master.addons.get("backorigin")
        # the guard as the addon holds it: its shared parts (issue 28's restructure), or through the mirroring child
        guard = addon.parts.guard
        not_found = guard.not_found
        for i in range(count):
            key = f"missing/{i:07d}"
            not_found.add(bucket, key, OriginRequest(url=f"http://127.0.0.1/{bucket}/{key}", headers=()))
        logger.warning("remembered %d origin 404s", len(not_found))


addons = [Remember404s()]
