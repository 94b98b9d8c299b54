"""Scenario 5, memory: RSS over 10,000 mixed requests (mitmdump+addon, and plain mitmdump as a
control); then one missing 1 GiB object read by 8 clients at once, and by one client, each on a
fresh mitmdump+addon: its peak RSS, the clients' times and sha256, origin GETs, landing."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import asdict
from typing import Any, TypedDict

from botocore.exceptions import BotoCoreError, ClientError

from bench.load import client as loadgen
from bench.load.downloads import Download, download, open_connections
from bench.report import Report, log
from bench.services.machine import RssSampler, cpu_seconds
from bench.services.mitmdump import Mitmdump
from bench.services.processes import listen_ports
from bench.stack import BUCKET, GiB, Stack


async def _mixed(port: int, count: int, start_index: int, tag: str, connections: int = 8) -> dict[str, int]:
    """A deterministic mix: 70 % 1 KiB hits, 10 % 1 MiB hits, 12 % new 1 KiB misses (mirrored),
    5 % misses the origin does not have either (404), 3 % HEADs of a hit."""
    pool = loadgen.Pool(port, connections)
    statuses: dict[str, int] = {}
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for i in range(start_index, start_index + count):
        slot = i % 100
        if slot < 70:
            request = ("GET", f"/{BUCKET}/small/hit")
        elif slot < 80:
            request = ("GET", f"/{BUCKET}/medium/hit")
        elif slot < 92:
            request = ("GET", f"/{BUCKET}/small/mix{tag}-{i}")
        elif slot < 97:
            request = ("GET", f"/{BUCKET}/nothing/mix{tag}-{i}")
        else:
            request = ("HEAD", f"/{BUCKET}/small/hit")
        queue.put_nowait(request)

    async def worker() -> None:
        while not queue.empty():
            method, path = queue.get_nowait()
            answer = await pool.request(method, path)
            statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1

    async with asyncio.timeout(300):
        await asyncio.gather(*(worker() for _ in range(connections)))
    pool.close()
    return statuses


HUGE_WITHIN = 300.0  # seconds: bounds each 1 GiB download and the wait for the object to land


async def _readers_at_once(proxy_port: int, store_port: int, path: str, clients: int, within: float,
                           proxy_pid: int) -> tuple[list[Download], float | None, float]:
    """`clients` connections opened first, then one GET each of `path` at once; meanwhile a
    HEAD to the store every 0.25 s until the object is there. Returns the downloads, the
    seconds from the GETs to the first HEAD that found it (None: not within `within`) and
    the CPU seconds the proxy used until the last client had its body."""
    connections = await open_connections(proxy_port, clients)
    store = loadgen.Pool(store_port, 1)
    started = time.monotonic()

    async def landed() -> float | None:
        while time.monotonic() - started < within:
            try:
                answer = await store.request("HEAD", path, timeout=10)
            except (OSError, EOFError, TimeoutError):  # the store busy or a connection dropped: ask again
                answer = None
            if answer is not None and answer.status == 200:
                return answer.done_at - started
            await asyncio.sleep(0.25)
        return None

    cpu_before = cpu_seconds(proxy_pid)
    poller = asyncio.create_task(landed())
    try:
        downloads = await asyncio.gather(*(download(c, path, within) for c in connections))
        delivery_cpu = cpu_seconds(proxy_pid) - cpu_before
        return list(downloads), await poller, delivery_cpu
    finally:
        poller.cancel()
        for connection in connections:
            connection.close()
        store.close()


class HugeMiss(TypedDict):
    clients: int
    rss_at_rest_mib: int
    vmhwm_mib: int
    sampled_rss_peak_mib: int
    sampled_rss_peak_at_s: float
    rss_series_s_mib: list[tuple[float, int]]
    origin_gets: int
    proxy_cpu_s_until_delivered: float
    proxy_cpu_s_until_landed: float
    joined_log_lines: int
    landed_s: float | None
    stored_bytes: int | None
    wrong: list[str]
    downloads: list[dict[str, Any]]  # a Download's fields, and sha256_ok


def _huge_miss(stack: Stack, name: str, clients: int, expected_sha256: str) -> HugeMiss:
    """A fresh mitmdump+addon (default settings); `clients` GETs of one missing 1 GiB key at
    once. Its VmHWM and sampled peak RSS, each client's times and sha256, the origin's GETs
    of the key, when the object was in the store."""
    port = listen_ports(1)[0]
    proxy = stack.proxy(name, port, stack.rules).start(stack.processes)
    key = f"huge/{name}"
    try:
        at_rest = proxy.memory()["VmRSS"]
        sampler = RssSampler(proxy.pid)
        sampler.start()
        try:
            cpu_before = cpu_seconds(proxy.pid)
            downloads, landed_s, delivery_cpu = asyncio.run(
                _readers_at_once(port, stack.store.s3_port, f"/{BUCKET}/{key}", clients, HUGE_WITHIN, proxy.pid))
            total_cpu = cpu_seconds(proxy.pid) - cpu_before
        finally:
            sampler.stop()
        memory = proxy.memory()
        # nginx logs a request as its answer ends, before the clients have their last byte;
        # a moment more for a second GET that should not be there
        deadline = time.monotonic() + 10
        while stack.origin_requests(f"/{key}", "GET") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        origin_gets = stack.origin_requests(f"/{key}", "GET")
        try:
            stored_bytes = stack.store.client().head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        except (BotoCoreError, ClientError):
            stored_bytes = None
        joined = proxy.log().count("joins the origin fetch")
    finally:
        stack.processes.stop(proxy.process)
    wrong = [f"client {i + 1}: {why}" for i, d in enumerate(downloads) if (why := d.wrong(GiB, expected_sha256))]
    return {
        "clients": clients, "rss_at_rest_mib": round(at_rest / 1024), "vmhwm_mib": round(memory["VmHWM"] / 1024),
        "sampled_rss_peak_mib": round(sampler.peak_kib / 1024), "sampled_rss_peak_at_s": round(sampler.peak_at, 1),
        "rss_series_s_mib": sampler.series, "origin_gets": origin_gets,
        "proxy_cpu_s_until_delivered": round(delivery_cpu, 1), "proxy_cpu_s_until_landed": round(total_cpu, 1),
        "joined_log_lines": joined, "landed_s": None if landed_s is None else round(landed_s, 2),
        "stored_bytes": stored_bytes, "wrong": wrong,
        "downloads": [{**asdict(d), "sha256_ok": d.sha256 == expected_sha256} for d in downloads],
    }


def _spread(values: list[float], unit: str = "s") -> str:
    """min / median / max"""
    if any(math.isnan(v) for v in values) or not values:
        return "n/a"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} {unit}"


class MixedGrowth(TypedDict):
    statuses: dict[str, int]
    rss_kib: list[int]
    growth_mib: float


def _mixed_growth(stack: Stack, proxy: Mitmdump, tag: str, writes: bool) -> MixedGrowth:
    """RSS of `proxy` after a 1,000-request warm-up and after each further 1,000, up to 11,000.

    A single RSS reading swings by ±25 MiB (1 MiB bodies in flight, malloc arenas of the
    write-back threads kept or returned; a 30,000-request run showed 144-193 MiB with no
    trend), so growth is the median of the last four readings minus the median of the first
    four: a leak moves the whole series, a swing moves one reading."""
    statuses: dict[str, int] = {}
    readings: list[int] = []
    done = 0
    for count in (1000,) * 11:
        for k, v in asyncio.run(_mixed(proxy.port, count, done, tag)).items():
            statuses[k] = statuses.get(k, 0) + v
        done += count
        if writes:  # pending write-backs hold bodies: let them land before reading RSS
            stack.wait_stored(f"small/mix{tag}-", sum(1 for i in range(done) if 80 <= i % 100 < 92), within=60)
        time.sleep(0.3)
        readings.append(proxy.memory()["VmRSS"])
    growth = (statistics.median(readings[-4:]) - statistics.median(readings[:4])) / 1024
    return {"statuses": statuses, "rss_kib": readings, "growth_mib": growth}


def scenario_memory(stack: Stack, report: Report) -> None:
    """5: RSS over 10,000 mixed requests (mitmdump+addon, and plain mitmdump as a control);
    then one missing 1 GiB object read by 8 clients at once, and by one client, each on a
    fresh mitmdump+addon: its peak RSS, the clients' times and sha256, origin GETs, landing."""
    port, plain_port = listen_ports(2)
    mem = stack.proxy("memory", port, stack.rules).start(stack.processes)
    control = stack.proxy("memory-plain", plain_port).start(stack.processes)
    try:
        addon = _mixed_growth(stack, mem, "a", writes=True)
        plain = _mixed_growth(stack, control, "p", writes=False)
    finally:
        stack.processes.stop(control.process)
        stack.processes.stop(mem.process)
    report.raw["memory_mixed"] = {"addon": addon, "plain": plain}
    low, high = min(addon["rss_kib"]) / 1024, max(addon["rss_kib"]) / 1024
    report.add("5", "memory", "RSS growth of mitmdump+addon over 10,000 mixed requests after 1,000 warm-up "
               "(median of last 4 readings − median of first 4; a reading every 1,000)",
               f"{addon['growth_mib']:+.1f} MiB (readings {low:.0f}-{high:.0f} MiB; plain mitmdump, same mix: "
               f"{plain['growth_mib']:+.1f} MiB)", "no growth (< 10 MiB)", addon["growth_mib"] < 10)

    expected = stack.huge_body()
    runs: dict[str, HugeMiss] = {}
    for name, clients in (("eight", 8), ("single", 1)):
        log(f"1 GiB miss, {clients} client(s) at once ...")
        result = runs[name] = _huge_miss(stack, name, clients, expected)
        downloads = result["downloads"]
        log(f"1 GiB miss, {clients} client(s): VmHWM {result['vmhwm_mib']} MiB, origin GETs {result['origin_gets']}, "
            f"stored after {result['landed_s']} s, totals {[round(d['total_s'], 1) for d in downloads]} s, "
            f"{result['proxy_cpu_s_until_delivered']} s CPU of mitmdump+addon until then "
            f"({result['proxy_cpu_s_until_landed']} s until stored)")
    report.raw["memory_1gib"] = {"sha256": expected, **runs}

    def problems(result: HugeMiss) -> str:
        found = list(result["wrong"])
        if result["landed_s"] is None or result["stored_bytes"] != GiB:
            found.append(f"not in the store within {HUGE_WITHIN:g} s (stored: {result['stored_bytes']} bytes)")
        return "; ".join(found)

    eight, single = runs["eight"], runs["single"]
    for result, who in ((eight, "8 clients GET it at once"), (single, "1 client GETs it")):
        wrong = problems(result)
        figure = (f"one missing 1 GiB object, {who} (fresh mitmdump+addon, default settings; each client hashes "
                  f"the body with sha256 and drops it): peak RSS of mitmdump+addon, VmHWM "
                  f"(sampled peak; at rest before)")
        if result is single:
            first = single["downloads"][0]
            figure += "; time to first byte, total; origin GETs; in the store after"
            measured = (f"{single['vmhwm_mib']} MiB ({single['sampled_rss_peak_mib']} MiB; {single['rss_at_rest_mib']} MiB); "
                        f"{first['first_byte_s']:.2f} s, {first['total_s']:.1f} s; {single['origin_gets']}; "
                        f"{single['landed_s']} s")
        else:
            measured = (f"{eight['vmhwm_mib']} MiB ({eight['sampled_rss_peak_mib']} MiB; "
                        f"{eight['rss_at_rest_mib']} MiB)")
        if wrong:
            measured += f" — FAILED: {wrong}"
        report.add("5", "memory", figure, measured, "< 300 MiB", result["vmhwm_mib"] < 300 and not wrong,
                   failed=f"1 GiB, {who}: {wrong}" if wrong else "")
    downloads = eight["downloads"]
    report.add("5", "memory", "the same 8 clients: time to first body byte, min / median / max",
               _spread([d["first_byte_s"] for d in downloads]))
    report.add("5", "memory", "the same 8 clients: time to the last byte, min / median / max",
               _spread([d["total_s"] for d in downloads]))
    report.add("5", "memory", "the same 8 clients: origin GETs of the key (origin's access log)",
               str(eight["origin_gets"]), "1", eight["origin_gets"] == 1)
    report.add("5", "memory", "the same 8 clients: object in the store, seconds after the GETs were sent",
               f"{eight['landed_s']} s" if eight["landed_s"] is not None else f"not within {HUGE_WITHIN:g} s")
