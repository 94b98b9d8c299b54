"""Scenario 10: costs that do not grow with the work (issue 28, item 8; issue 26 asked the first
two points). The cost of a hit, a miss, a PUT, a DELETE and a merged-listing page as the proxy's
state grows, one axis at a time: tombstones (0 to 1,000,000), remembered origin 404s (0 to
100,000), pending write-backs (0 to 100,000), buckets of 20 rules (1 to 1,000, and 1,000 whose
requests' bucket is covered by a pattern entry). Each point of an axis is a mitmdump+addon of its
own with that state (made as bench/scenarios/state/build.py says), all of an axis's proxies
running side by side with the same options; every other thing about them is the same: the bucket's
20 rules, the merged listing on, an S3 origin of 2,000 keys for it (another bucket of the store).

Each curve is the proxy's CPU per request and the latency percentiles at each point; flat means
the largest within 1.2× of the smallest. bench/out/state-curves.png plots them, and
bench/out/state-curves.md is the table for the docs (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.report import OUT, Report, log
from bench.scenarios.state import build
from bench.scenarios.state.measure import Cost, Operation, open_descriptors, settle, side_by_side, spread
from bench.scenarios.state.tables import FLAT, curves_table, draw
from bench.services.mitmdump import Mitmdump
from bench.services.processes import listen_ports
from bench.stack import BUCKET, KiB, Stack

ORIGIN_BUCKET = "bench-listed"
DESCRIPTORS_BESIDES = 2_000  # what a proxy opens besides its pending write-backs' bodies (connections, files), at most
REMEMBER_SCRIPT = Path(__file__).resolve().parent / "remember_404s.py"


@dataclass(frozen=True)
class Point:
    label: str
    size: int  # the state's size (the plot's x)
    pattern: bool = False  # buckets: the requests' bucket is covered by a pattern entry, not its own


@dataclass(frozen=True)
class Axis:
    name: str
    what: str  # "tombstones": the figure says "as tombstones grow"
    points: tuple[Point, ...]


def _points(*sizes: int) -> tuple[Point, ...]:
    return tuple(Point(f"{size:,}", size) for size in sizes)


AXES = (
    Axis("tombstones", "tombstones", _points(0, 1_000, 10_000, 100_000, 1_000_000)),
    Axis("404s", "remembered origin 404s", _points(0, 1_000, 10_000, 100_000)),
    Axis("pending", "pending write-backs", _points(0, 1_000, 10_000, 100_000)),
    Axis("buckets", "buckets of 20 rules", (*_points(1, 10, 100, 1_000), Point("1,000 (a pattern's)", 1_000, pattern=True))),
)


def _has_keys(body: bytes) -> str:
    return "" if b"<KeyCount>1000</KeyCount>" in body else f"not a page of 1,000 keys: {body[:200]!r}"


def _is_small(body: bytes) -> str:
    return "" if len(body) == KiB else f"{len(body)} bytes"


OPERATIONS = (
    Operation("hit", "GET", lambda who, n, i: f"/{BUCKET}/small/hit", 100, check=_is_small),
    Operation("miss", "GET", lambda who, n, i: f"/{BUCKET}/small/state-{who}-{n}-{i}", 50, check=_is_small),
    Operation("PUT", "PUT", lambda who, n, i: f"/{BUCKET}/state/{who}-{n}-{i}", 50, body=b"s" * KiB),
    Operation("DELETE", "DELETE", lambda who, n, i: f"/{BUCKET}/state/{who}-{n}-{i}", 50, status=204),
    Operation("listing page", "GET", lambda who, n, i: f"/{BUCKET}?list-type=2&prefix=listed/", 3, check=_has_keys),
)


@dataclass
class StateRun:
    """What every proxy of the scenario shares: the stack, the rules of one bucket, where the
    states are made, and the black hole the pending write-backs wait on."""

    stack: Stack
    rules: Path
    black_hole: str
    scale: float

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.stack.origin_port}/"

    @property
    def listed_origin(self) -> str:
        return f"{self.stack.store.endpoint}/{ORIGIN_BUCKET}/"

    def proxy(self, axis: Axis, index: int, port: int) -> tuple[Mitmdump, float]:
        """The point's proxy, not started, with its state made; and the seconds making it took."""
        point, name = axis.points[index], f"state-{axis.name}-{index}"
        spool = self.stack.tmp / f"spool-{name}"
        options = {"backorigin_merged_listing": "true", "backorigin_spool_dir": str(spool), "backorigin_max_rules": "20",
                   "backorigin_origin_404_ttl": "3600", "backorigin_writeback_queue": "1000000",
                   "backorigin_shutdown_timeout": "1"}
        rules, open_files = self.rules, None
        scripts: tuple[str, ...] = ()
        began = time.monotonic()
        if axis.name == "tombstones":
            build.write_tombstones(spool, BUCKET, point.size)
        elif axis.name == "404s":
            scripts, options["bench_remembered_404s"] = (str(REMEMBER_SCRIPT),), str(point.size)
        elif axis.name == "pending":
            build.write_pending(spool, self.black_hole, BUCKET, point.size)
            open_files = point.size + DESCRIPTORS_BESIDES  # one descriptor per pending write-back (see BENCHMARKS.md)
        else:
            rules = build.write_bucket_rules(self.stack.tmp / f"rules-{name}.json", BUCKET, point.size, self.origin,
                                             self.listed_origin, pattern=point.pattern)
        proxy = self.stack.proxy(name, port, rules, options, scripts=scripts)
        proxy.open_files = open_files
        return proxy, time.monotonic() - began


def three_points(axis: Axis) -> Axis:
    """The axis at its smallest point, a middle one and its largest (python -m bench --state-quick)."""
    points = axis.points
    return Axis(axis.name, axis.what, (points[0], points[len(points) // 2], points[-1]))


def within_descriptors(axis: Axis) -> Axis:
    """The pending axis with each point cut down to the write-backs a proxy may hold open on this
    machine (to whole thousands, and said in the point's label), when its descriptor limit cannot
    be raised; every other axis as it is."""
    if axis.name != "pending":
        return axis
    points = []
    for point in axis.points:
        allowed = build.descriptors_allowed(point.size + DESCRIPTORS_BESIDES)
        fits = min(point.size, (allowed - DESCRIPTORS_BESIDES) // 1000 * 1000)
        points.append(point if fits == point.size else
                      Point(f"{fits:,} (not {point.size:,}: {allowed:,} descriptors allowed)", fits))
    return Axis(axis.name, axis.what, tuple(points))


def _started(run: StateRun, axis: Axis, proxy: Mitmdump, point: Point) -> float:
    """Start the proxy (its worker beside the store); the seconds until it listens."""
    began = time.monotonic()
    proxy.start(run.stack.processes, ready_within=300)
    run.stack.beside_the_store(proxy)
    if axis.name == "404s":
        deadline = time.monotonic() + 300
        while f"remembered {point.size} origin 404s" not in proxy.log():
            if time.monotonic() > deadline or "Traceback" in proxy.log():
                raise RuntimeError(f"{proxy.name} does not remember its 404s: {proxy.log()[-2000:]}")
            time.sleep(0.5)
    return time.monotonic() - began


def measure_axis(run: StateRun, axis: Axis) -> dict[str, object]:
    """Every point of the axis side by side: each operation's cost at each point, and what making,
    starting and holding the state took."""
    ports = listen_ports(len(axis.points))
    load = os.getloadavg()[0]
    made = [run.proxy(axis, index, port) for index, port in enumerate(ports)]
    proxies = [proxy for proxy, _ in made]
    try:
        start_s = [_started(run, axis, proxy, point) for proxy, point in zip(proxies, axis.points, strict=True)]
        settled = settle([proxy.pid for proxy in proxies])
        log(f"state {axis.name}: {len(proxies)} proxies up ({', '.join(f'{s:.0f} s' for s in start_s)}), settled in {settled:.0f} s")
        targets = {proxy.name: (proxy.port, proxy.pid) for proxy in proxies}
        costs: dict[str, list[Cost]] = {}
        for operation in OPERATIONS:
            by_proxy = side_by_side(targets, operation, run.scale)
            costs[operation.name] = [by_proxy[proxy.name] for proxy in proxies]
            log(f"state {axis.name} {operation.name}: CPU/request " + " ".join(f"{c.cpu_ms:.2f}" for c in costs[operation.name])
                + " ms; p50 " + " ".join(f"{c.latency_ms(50):.2f}" for c in costs[operation.name]) + " ms")
        pending = [build.pending_in(Path(proxy.options["backorigin_spool_dir"])) for proxy in proxies]
        return {"points": [point.label for point in axis.points], "sizes": [point.size for point in axis.points],
                "pattern": [point.pattern for point in axis.points], "build_s": [round(s, 1) for _, s in made],
                "start_s": [round(s, 1) for s in start_s], "settle_s": round(settled, 1),
                "descriptors": [open_descriptors(proxy.pid) for proxy in proxies],
                "rss_mib": [round(proxy.memory()["VmRSS"] / 1024) for proxy in proxies], "spooled": pending,
                "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                "costs": {name: [cost.raw() for cost in values] for name, values in costs.items()}}
    finally:
        for proxy in proxies:
            run.stack.processes.stop(proxy.process)
        for proxy in proxies:
            shutil.rmtree(proxy.options["backorigin_spool_dir"], ignore_errors=True)


def add_rows(report: Report, axis: Axis, raw: dict) -> None:
    """One row per operation: CPU per request and p50 at each point, and whether they stay flat;
    and one with the proxy's open descriptors."""
    points = " → ".join(raw["points"])
    for name, costs in raw["costs"].items():
        cpu, p50 = [c["cpu_ms"] for c in costs], [c["p50_ms"] for c in costs]
        wrong = [w for c in costs for w in c["wrong"]]
        report.add("10", "state", f"{name} as {axis.what} grow ({points}): CPU of mitmdump+addon per request, ms "
                   "(largest ÷ smallest); p50 latency, ms (largest ÷ smallest)",
                   f"{' / '.join(f'{v:.2f}' for v in cpu)} ({spread(cpu):.2f}); {' / '.join(f'{v:.1f}' for v in p50)} "
                   f"({spread(p50):.2f})", f"≤ {FLAT:.2f} each", spread(cpu) <= FLAT and spread(p50) <= FLAT,
                   failed=f"{axis.name}, {name}: {len(wrong)} wrong answers, e.g. {wrong[:2]}" if wrong else "")
    stray = [f"{label}: {left} of {size:,}" for label, size, left in zip(raw["points"], raw["sizes"], raw["spooled"], strict=True)
             if axis.name == "pending" and left < size]
    report.add("10", "state", f"as {axis.what} grow ({points}): open file descriptors of mitmdump+addon; RSS, MiB",
               f"{' / '.join(str(n) for n in raw['descriptors'])}; {' / '.join(str(n) for n in raw['rss_mib'])}",
               failed=f"pending write-backs landed during the run: {stray}" if stray else "")


def scenario_state(stack: Stack, report: Report, seconds: float, axes: tuple[Axis, ...] = AXES) -> None:
    store = stack.store
    store.create_buckets([ORIGIN_BUCKET])
    s3 = store.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=ORIGIN_BUCKET, Key=build.listed_key(i), Body=b"o"), range(build.LISTED_KEYS)))
    raw: dict[str, dict] = {}
    with build.BlackHole() as black_hole:
        rules = stack.tmp / "rules-state.json"
        run = StateRun(stack, rules, black_hole.url, seconds / 5)
        build.write_bucket_rules(rules, BUCKET, 1, run.origin, run.listed_origin)
        for axis in map(within_descriptors, axes):
            raw[axis.name] = measure_axis(run, axis)
            add_rows(report, axis, raw[axis.name])
    report.raw["state"] = raw
    whats = {axis.name: axis.what for axis in axes}
    OUT.mkdir(exist_ok=True)
    (OUT / "state-curves.md").write_text(curves_table(raw, whats) + "\n")
    draw(raw, whats, OUT / "state-curves.png")
    log(f"state: the curves in {OUT / 'state-curves.png'}, the table in {OUT / 'state-curves.md'}")

