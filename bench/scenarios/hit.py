"""Scenario 1 (and 7's hit rows): GETs of existing objects; addon ÷ plain mitmdump and nginx ÷
plain, side by side, with a control: plain mitmdump running an empty `-s` script (what mitmproxy
charges for any script).

Runs alternate plain/addon (ABBAABBA) in short slices, so that drift and other load on the
machine fall on both sides alike. Besides throughput, the proxy's own CPU time per request is read
from /proc: its ratio is what throughput would be if the proxy alone limited it, and it is far less
sensitive to other processes on the machine."""

from __future__ import annotations

from bench.load.wrk import WrkResult, wrk
from bench.report import Report, log
from bench.services.machine import cpu_seconds
from bench.stack import BUCKET, ORIGIN_FILES, Stack

ORDER = ("plain", "addon", "script", "script", "addon", "plain", "plain", "addon", "script", "script", "addon", "plain", "nginx")


def _slices(stack: Stack, prefix: str, connections: int, seconds: int) -> tuple[dict[str, list[WrkResult]], dict[str, float]]:
    """wrk slices in ORDER; the results by proxy, and the CPU seconds each mitmdump used in them."""
    targets = {"plain": stack.plain.port, "addon": stack.addon.port, "script": stack.script.port, "nginx": stack.reference_port}
    pids = {"plain": stack.plain.pid, "addon": stack.addon.pid, "script": stack.script.pid}
    size = ORIGIN_FILES[prefix][1]
    runs: dict[str, list[WrkResult]] = {who: [] for who in targets}
    cpu: dict[str, float] = {who: 0.0 for who in pids}
    for who in ORDER:
        before = cpu_seconds(pids[who]) if who in pids else 0.0
        result = wrk(f"http://127.0.0.1:{targets[who]}/{BUCKET}/{prefix}/hit", connections, seconds)
        if who in pids:
            cpu[who] += cpu_seconds(pids[who]) - before
        if result.non_2xx or result.errors or not result.plausible_size(size):
            log(f"hit {prefix} c{connections} via {who}: {result.non_2xx} non-2xx, {result.errors} errors, "
                f"{result.bytes_per_request:.0f} bytes per response")
        runs[who].append(result)
    return runs, cpu


def scenario_hit(stack: Stack, report: Report, seconds: float) -> None:
    slice_ = max(2, round(seconds * 0.4))
    for port in (stack.plain.port, stack.addon.port, stack.script.port, stack.reference_port):  # warm-up: connections, caches
        wrk(f"http://127.0.0.1:{port}/{BUCKET}/small/hit", 64, 1)
    raw: dict[str, object] = {}
    for prefix, size_name in (("small", "1 KiB"), ("medium", "1 MiB")):
        for connections in (8, 64):
            runs, cpu = _slices(stack, prefix, connections, slice_)
            requests = {who: sum(r.requests for r in rs) for who, rs in runs.items()}
            rps = {who: requests[who] / sum(r.seconds for r in rs) for who, rs in runs.items()}
            cpu_per_request = {who: cpu[who] / requests[who] for who in cpu}
            ratio = rps["addon"] / rps["plain"]
            cpu_ratio = cpu_per_request["plain"] / cpu_per_request["addon"]
            key = f"{prefix}-c{connections}"
            raw[key] = {"rps": {k: round(v, 1) for k, v in rps.items()},
                        "cpu_us_per_request": {k: round(v * 1e6) for k, v in cpu_per_request.items()},
                        "addon_over_plain": round(ratio, 4), "cpu_ratio": round(cpu_ratio, 4),
                        "script_over_plain": round(rps["script"] / rps["plain"], 4),
                        "script_cpu_ratio": round(cpu_per_request["plain"] / cpu_per_request["script"], 4),
                        "nginx_over_plain": round(rps["nginx"] / rps["plain"], 2),
                        "runs": {who: [r.raw() for r in rs] for who, rs in runs.items()}}
            report.add("1", "hit path", f"{size_name} warm GET, {connections} conns: throughput addon ÷ plain mitmdump "
                       f"(in brackets: CPU per request, plain ÷ addon)", f"{ratio:.3f} ({cpu_ratio:.3f})",
                       "≥ 0.95", ratio >= 0.95)
            report.add("1", "hit path", f"{size_name} warm GET, {connections} conns: control, plain mitmdump running an empty "
                       f"-s script ÷ plain mitmdump (in brackets: CPU per request, plain ÷ script)",
                       f"{rps['script'] / rps['plain']:.3f} ({cpu_per_request['plain'] / cpu_per_request['script']:.3f})")
            report.raw.setdefault("reference_hit", {})[key] = round(rps["nginx"] / rps["plain"], 2)
            log(f"hit {size_name} c{connections}: plain {rps['plain']:.0f}/s {cpu_per_request['plain'] * 1e6:.0f} µs CPU/req, "
                f"addon {rps['addon']:.0f}/s {cpu_per_request['addon'] * 1e6:.0f} µs CPU/req, "
                f"empty script {rps['script']:.0f}/s {cpu_per_request['script'] * 1e6:.0f} µs CPU/req, nginx {rps['nginx']:.0f}/s")
    report.raw["hit"] = raw


def reference_hit_rows(report: Report) -> None:
    for key, ratio in report.raw.get("reference_hit", {}).items():
        prefix, conns = key.split("-c")
        size_name = "1 KiB" if prefix == "small" else "1 MiB"
        report.add("7", "reference", f"hit {size_name}, {conns} conns: throughput nginx ÷ plain mitmdump", f"{ratio:.1f}×")
