"""`make bench ARGS=--profile`: py-spy records mitmdump+addon under the hit and the miss loads, and
plain mitmdump under the hit load (what mitmproxy alone spends on the same hit); the raw stacks and
a summary of each (bench.profile) go to bench/out/."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench.load.wrk import wrk
from bench.profile import summarise
from bench.report import Report, log
from bench.services.install import ensure_py_spy
from bench.stack import BUCKET, Stack


def record_profiles(stack: Stack, report: Report, seconds: float, out: Path) -> None:
    """py-spy on mitmdump+addon under the hit and the miss load, and on plain mitmdump under the hit
    load; raw stacks and a summary in `out`."""
    py_spy = ensure_py_spy()
    out.mkdir(exist_ok=True)
    duration = max(4, round(seconds))
    summaries = {}
    for name, proxy, path, connections, prefix in (
        ("hit-1k", stack.addon, f"/{BUCKET}/small/hit", 64, None),
        ("plain-hit-1k", stack.plain, f"/{BUCKET}/small/hit", 64, None),  # what mitmproxy alone spends on the same hit
        ("hit-1m", stack.addon, f"/{BUCKET}/medium/hit", 64, None),
        ("miss-1k", stack.addon, "/", 8, f"/{BUCKET}/small/prof-"),
        ("miss-8m", stack.addon, "/", 1, f"/{BUCKET}/large/prof-"),
    ):
        url = f"http://127.0.0.1:{proxy.port}{path}"
        output = out / f"profile-{name}.txt"
        with open(out / f"profile-{name}.log", "wb") as py_spy_log:
            recorder = stack.processes.start(
                "py-spy", [py_spy, "record", "--pid", str(proxy.pid), "--rate", "250", "--duration", str(duration + 1),
                           "--format", "raw", "--threads", "--gil", "--full-filenames", "--nonblocking", "--output", str(output)],
                stdout=py_spy_log, stderr=subprocess.STDOUT,
            )
        time.sleep(0.5)
        result = wrk(url, connections, duration, prefix)
        try:
            recorder.wait(timeout=duration + 30)
        finally:
            stack.processes.stop(recorder)
        summaries[name] = summarise(output, top=15)
        summaries[name]["rps"] = round(result.rps, 1)
        (out / f"profile-{name}.summary.txt").write_text(summaries[name]["text"])
        log(f"profile {name}: {output}")
    report.raw["profile"] = {k: {kk: vv for kk, vv in v.items() if kk != "text"} for k, v in summaries.items()}
