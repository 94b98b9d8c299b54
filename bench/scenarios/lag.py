"""Scenario 4, write-back lag: open-loop misses at `rate`/s; from each client's answer until a HEAD
to the store sees the object (polled every 5 ms)."""

from __future__ import annotations

import asyncio
import time
from typing import TypedDict

from bench.load import client as loadgen
from bench.report import Report, log
from bench.stack import BUCKET, Stack


class LagResult(TypedDict):
    lags: list[float]
    latencies: list[float]
    problems: list[str]
    rate: float


async def _write_back_lag(proxy_port: int, store_port: int, rate: float, count: int, prefix: str) -> LagResult:
    proxy = loadgen.Pool(proxy_port, 64)
    store = loadgen.Pool(store_port, 64)
    lags: list[float] = []
    latencies: list[float] = []
    problems: list[str] = []

    async def one(index: int) -> None:
        path = f"/{BUCKET}/{prefix}{index}"
        answer = await proxy.request("GET", path)
        if answer.status != 200:
            problems.append(f"{path}: {answer.status}")
            return
        latencies.append(answer.seconds)
        deadline = answer.done_at + 30
        while time.monotonic() < deadline:
            seen = await store.request("HEAD", path)
            if seen.status == 200:
                lags.append(seen.done_at - answer.done_at)
                return
            await asyncio.sleep(0.005)
        problems.append(f"{path}: not readable in the store within 30 s")

    start = time.monotonic()
    tasks = []
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(index)))
    sent_in = time.monotonic() - start
    async with asyncio.timeout(120):
        await asyncio.gather(*tasks, return_exceptions=False)
    proxy.close()
    store.close()
    return {"lags": lags, "latencies": latencies, "problems": problems, "rate": count / sent_in if sent_in else 0}


def scenario_lag(stack: Stack, report: Report, seconds: float, rate: float = 50.0) -> None:
    """4: open-loop misses at `rate`/s; from each client response until a HEAD on the store sees the object."""
    count = int(rate * seconds)
    result = asyncio.run(_write_back_lag(stack.addon.port, stack.store.s3_port, rate, count, "small/lag-"))
    lags = result["lags"]
    p50, p99 = loadgen.percentile(lags, 50), loadgen.percentile(lags, 99)
    report.raw["write_back_lag"] = {
        "count": count, "rate_achieved": round(result["rate"], 1), "p50_s": p50, "p99_s": p99,
        "client_p50_s": loadgen.percentile(result["latencies"], 50), "problems": result["problems"][:10],
    }
    report.add("4", "write-back lag", f"1 KiB misses at {result['rate']:.0f}/s: response → readable in store, p50 / p99",
               f"{p50:.3f} s / {p99:.3f} s", "p99 < 1 s", p99 < 1.0)
    if result["problems"]:
        log(f"write-back lag: {len(result['problems'])} problems, e.g. {result['problems'][:3]}")
