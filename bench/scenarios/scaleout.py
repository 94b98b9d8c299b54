"""Scenario 6, scale-out: one vs two fresh mitmdump+addon processes behind nginx `stream`, both with
their tombstones in the store (as a fleet runs), 64 connections, alternating 2-second slices, for
1 KiB hits and 1 KiB misses; nothing pinned (two proxies, the store, the balancer and wrk share the
cores, as on a real 2-core host)."""

from __future__ import annotations

import math
import os

from bench.load.wrk import WrkResult, wrk
from bench.report import Report, log
from bench.services.machine import descendants
from bench.services.nginx import Nginx, balancer_config
from bench.services.processes import listen_ports, set_affinity
from bench.stack import BUCKET, Stack

TOMBSTONES_BUCKET = "bench-tombstones"


def scenario_scaleout(stack: Stack, report: Report, seconds: float) -> None:
    """6: 1 vs 2 mitmdump+addon processes behind nginx stream, same balancer path for both."""
    # Nothing pinned here: two proxies, the store, the balancer and wrk share both cores,
    # as they would on a real 2-core host.
    everything = frozenset(os.sched_getaffinity(0) | (stack.cpus.proxy or set()))
    os.sched_setaffinity(0, everything)
    for pid in descendants(os.getpid()):
        set_affinity(pid, everything)
    # two fresh processes that share their tombstones through the store, as a fleet would
    stack.store.create_buckets([TOMBSTONES_BUCKET])
    first_port, second_port, one_port, two_port = listen_ports(4)
    shared = {"backorigin_tombstones": f"s3://{TOMBSTONES_BUCKET}/"}
    first, second = (
        stack.proxy(name, port, stack.rules, shared, pinned=False).start(stack.processes)
        for name, port in (("scale-1", first_port), ("scale-2", second_port))
    )
    balancer = Nginx("balancer", stack.tmp / "nginx-balancer",
                     balancer_config({one_port: [first.port], two_port: [first.port, second.port]}))
    balancer.start(stack.processes, [one_port, two_port])
    slice_ = max(2, math.ceil(seconds / 2))
    raw: dict[str, object] = {}
    try:
        wrk(f"http://127.0.0.1:{two_port}/{BUCKET}/small/hit", 64, 1)  # warm-up
        for name, figure, path, prefix in (
            ("hit", "1 KiB hits, 64 conns", f"/{BUCKET}/small/hit", None),
            ("miss", "1 KiB misses (each a new key), 64 conns", "/", f"/{BUCKET}/small/scale-"),
        ):
            runs: dict[int, list[WrkResult]] = {1: [], 2: []}
            for n in (1, 2, 2, 1):
                port = one_port if n == 1 else two_port
                unique = f"{prefix}{n}-{len(runs[n])}-" if prefix else None
                result = wrk(f"http://127.0.0.1:{port}{path}", 64, slice_, unique)
                runs[n].append(result)
                if unique:  # let this slice's write-backs land, or they would slow the next slice
                    stack.wait_stored(unique.split("/", 2)[2], result.requests, within=60)
            rps = {n: sum(r.requests for r in rs) / sum(r.seconds for r in rs) for n, rs in runs.items()}
            errors = sum(r.non_2xx + r.errors for rs in runs.values() for r in rs)
            raw[name] = {"rps": rps, "errors": errors, "runs": {n: [r.raw() for r in rs] for n, rs in runs.items()}}
            ratio = rps[2] / rps[1]
            report.add("6", "scale-out", f"{figure}: throughput 2 processes ÷ 1 (nginx stream, 2 cores; tombstones "
                       "shared through the store)", f"{ratio:.2f}", "≥ 1.8" if name == "miss" else "",
                       ratio >= 1.8 if name == "miss" else None)
            log(f"scale-out {name}: 1 process {rps[1]:.0f}/s, 2 processes {rps[2]:.0f}/s, {errors} errors")
    finally:
        stack.processes.stop(balancer.process)
        for proxy in (first, second):
            stack.processes.stop(proxy.process)
    report.raw["scaleout"] = raw
