"""Scenario 9, large hits: one stored 1 GiB object, 8 clients GET it at once, through a fresh plain
mitmdump (stream_large_bodies=1m) and then a fresh mitmdump+addon (default settings): each one's
VmHWM and the throughput, addon ÷ plain."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict
from typing import Any, TypedDict

from bench.load.downloads import readers
from bench.report import Report, log
from bench.scenarios.memory import HUGE_WITHIN
from bench.services.machine import RssSampler, cpu_seconds
from bench.services.mitmdump import Mitmdump
from bench.services.processes import listen_ports
from bench.stack import BUCKET, ORIGIN_FILES, GiB, MiB, Stack

LARGE_CLIENTS = 8
LARGE_HASHING = 1  # clients that also sha256 the body (all check status and length): hashing
# 8 GiB would take a whole core beside the store, and the clients rather than the proxy would set the pace


def _stored_huge(stack: Stack, report: Report) -> str:
    """A stored copy of the origin's 1 GiB body: the memory scenario's, when it landed whole,
    else one uploaded straight to the store now (multipart, 16 MiB parts)."""
    from boto3.s3.transfer import TransferConfig

    memory = report.raw.get("memory_1gib", {})
    for name in ("eight", "single"):
        run = memory.get(name)
        if run and run["stored_bytes"] == GiB and not run["wrong"]:
            return f"huge/{name}"
    stack.huge_body()
    key = "huge/stored"
    log("large hits: uploading the 1 GiB object to the store")
    config = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4)
    stack.store.client().upload_file(str(stack.tmp / "origin-files" / ORIGIN_FILES["huge"][0]), BUCKET, key, Config=config)
    return key


class LargeHits(TypedDict):
    rss_at_rest_mib: int
    vmhwm_mib: int
    sampled_rss_peak_mib: int
    rss_series_s_mib: list[tuple[float, int]]
    seconds: float  # GETs sent -> the last client's last byte
    mib_per_s: float  # all clients' bytes ÷ seconds
    proxy_cpu_s: float
    bench_cpu_s: float  # the clients (and the rest of the bench) on their core
    store_cpu_s: float  # SeaweedFS, beside them
    wrong: list[str]
    downloads: list[dict[str, Any]]


def _large_hits(stack: Stack, proxy: Mitmdump, path: str, expected_sha256: str) -> LargeHits:
    proxy.start(stack.processes)
    try:
        if proxy.rules is not None:
            stack.beside_the_store(proxy)
        at_rest = proxy.memory()["VmRSS"]
        sampler = RssSampler(proxy.pid)
        sampler.start()
        try:
            store_pid = stack.store.process.pid if stack.store.process else None
            store_before = cpu_seconds(store_pid) if store_pid else 0.0
            cpu_before, bench_before = cpu_seconds(proxy.pid), time.process_time()
            downloads = asyncio.run(readers(proxy.port, path, LARGE_CLIENTS, LARGE_HASHING, HUGE_WITHIN))
            proxy_cpu, bench_cpu = cpu_seconds(proxy.pid) - cpu_before, time.process_time() - bench_before
            store_cpu = cpu_seconds(store_pid) - store_before if store_pid else math.nan
        finally:
            sampler.stop()
        memory = proxy.memory()
    finally:
        stack.processes.stop(proxy.process)
    wrong = [f"client {i + 1}: {why}" for i, d in enumerate(downloads) if (why := d.wrong(GiB, expected_sha256))]
    seconds = max(d.total_s for d in downloads)
    return {
        "rss_at_rest_mib": round(at_rest / 1024), "vmhwm_mib": round(memory["VmHWM"] / 1024),
        "sampled_rss_peak_mib": round(sampler.peak_kib / 1024), "rss_series_s_mib": sampler.series,
        "seconds": round(seconds, 2), "mib_per_s": round(sum(d.size for d in downloads) / MiB / seconds, 1),
        "proxy_cpu_s": round(proxy_cpu, 2), "bench_cpu_s": round(bench_cpu, 2),
        "store_cpu_s": round(store_cpu, 2), "wrong": wrong,
        "downloads": [{**asdict(d), "sha256_ok": d.sha256 == expected_sha256 if d.sha256 else None} for d in downloads],
    }


def scenario_largehit(stack: Stack, report: Report) -> None:
    """9: one stored 1 GiB object, 8 clients GET it at once, through a fresh plain mitmdump
    (stream_large_bodies=1m) and then a fresh mitmdump+addon (default settings): each one's
    VmHWM and the throughput, addon ÷ plain."""
    began = time.monotonic()
    expected = stack.huge_body()
    key = _stored_huge(stack, report)
    path = f"/{BUCKET}/{key}"
    warm = asyncio.run(readers(stack.store.s3_port, path, 1, 0, HUGE_WITHIN))[0]  # the store's caches, for both alike
    if warm.status != 200 or warm.size != GiB:
        raise RuntimeError(f"large hits: the store answered {warm.status} with {warm.size} bytes for {key}")
    set_up = time.monotonic() - began  # the body written and stored (unless the memory scenario did), one read
    plain_port, addon_port = listen_ports(2)
    proxies = {
        "plain": stack.proxy("large-plain", plain_port, options={"stream_large_bodies": "1m"}),
        "addon": stack.proxy("large-addon", addon_port, stack.rules),
    }
    runs: dict[str, LargeHits] = {}
    for who, proxy in proxies.items():
        log(f"large hits: {LARGE_CLIENTS} clients read 1 GiB each through {who} ...")
        run = runs[who] = _large_hits(stack, proxy, path, expected)
        log(f"large hits via {who}: {run['seconds']} s, {run['mib_per_s']} MiB/s, VmHWM {run['vmhwm_mib']} MiB "
            f"(at rest {run['rss_at_rest_mib']} MiB); CPU: proxy {run['proxy_cpu_s']} s, store {run['store_cpu_s']} s, "
            f"clients {run['bench_cpu_s']} s")
    report.raw["large_hits"] = {"key": key, "sha256": expected, "set_up_s": round(set_up, 1),
                                "warm_read_s": round(warm.total_s, 2), **runs}
    plain, addon = runs["plain"], runs["addon"]
    wrong = [f"{who}: {w}" for who, run in runs.items() for w in run["wrong"]]
    failed = "; ".join(wrong[:4]) if wrong else ""
    figure = (f"one stored 1 GiB object, {LARGE_CLIENTS} clients GET it at once (each reads the whole body, checks "
              f"status and length, {LARGE_HASHING} also sha256): ")
    rss_ratio = addon["vmhwm_mib"] / plain["vmhwm_mib"]
    report.add("9", "large hits", figure + "peak RSS (VmHWM) of mitmdump+addon ÷ plain mitmdump with "
               "stream_large_bodies=1m (MiB; at rest before)",
               f"{rss_ratio:.2f} ({addon['vmhwm_mib']} ÷ {plain['vmhwm_mib']} MiB; {addon['rss_at_rest_mib']} ÷ "
               f"{plain['rss_at_rest_mib']} MiB)", "≤ 2.00", rss_ratio <= 2.0 and not wrong, failed=failed)

    def busy(run: LargeHits) -> str:
        return f"{run['proxy_cpu_s'] / run['seconds']:.0%}"

    ratio = addon["mib_per_s"] / plain["mib_per_s"]
    report.add("9", "large hits", f"the same: throughput addon ÷ plain mitmdump ({LARGE_CLIENTS} GiB ÷ time to the "
               "last byte; in brackets MiB/s and the proxy's CPU use while reading)",
               f"{ratio:.2f} ({addon['mib_per_s']:.0f} ÷ {plain['mib_per_s']:.0f} MiB/s; {busy(addon)} / {busy(plain)})",
               "≥ 0.90", ratio >= 0.9 and not wrong)
