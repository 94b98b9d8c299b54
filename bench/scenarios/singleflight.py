"""Scenario 3, singleflight: `clients` connections opened first, then one GET each of the same
missing key at once; the origin's requests counted in its own access log (3 rounds, 1 KiB and 8 MiB)."""

from __future__ import annotations

import asyncio
import time
from typing import TypedDict

from bench.load import client as loadgen
from bench.load.downloads import open_connections
from bench.report import Report, log
from bench.stack import BUCKET, Stack


class FlightRound(TypedDict):
    origin_requests: int
    statuses: list[int]
    p50_ms: float
    p99_ms: float


async def _singleflight(port: int, path: str, clients: int) -> list[loadgen.Answer]:
    connections = await open_connections(port, clients)
    try:
        return await asyncio.gather(*(c.request("GET", path, timeout=120) for c in connections))
    finally:
        for c in connections:
            c.close()


def scenario_singleflight(stack: Stack, report: Report, clients: int = 100) -> None:
    """3: `clients` connections, opened first, then one GET each of the same missing key at once."""
    raw: dict[str, object] = {}
    for prefix, size_name in (("small", "1 KiB"), ("large", "8 MiB")):
        rounds: list[FlightRound] = []
        for attempt in range(3):
            key = f"{prefix}/flight-{attempt}"
            answers = asyncio.run(_singleflight(stack.addon.port, f"/{BUCKET}/{key}", clients))
            time.sleep(0.3)  # the origin's access-log line is written as its response ends
            fetches = stack.origin_requests(f"/{key}")
            latencies = [a.seconds * 1000 for a in answers]
            statuses = sorted({a.status for a in answers})
            rounds.append({"origin_requests": fetches, "statuses": statuses,
                           "p50_ms": round(loadgen.percentile(latencies, 50), 2),
                           "p99_ms": round(loadgen.percentile(latencies, 99), 2)})
            stack.wait_stored(key, 1, within=30)
        worst = max(r["origin_requests"] for r in rounds)
        p99 = loadgen.percentile([r["p99_ms"] for r in rounds], 50)
        raw[prefix] = rounds
        report.add("3", "singleflight", f"{clients} concurrent GETs of one missing {size_name} key: origin requests (3 rounds)",
                   " / ".join(str(r["origin_requests"]) for r in rounds), "1", worst == 1)
        report.add("3", "singleflight", f"{clients} concurrent GETs of one missing {size_name} key: p99 latency (median round)",
                   f"{p99:.0f} ms")
        if any(r["statuses"] != [200] for r in rounds):
            log(f"singleflight {prefix}: statuses {[r['statuses'] for r in rounds]}")
    report.raw["singleflight"] = raw
