"""The benchmark suite: `make bench` (or `.venv/bin/python -m bench`).

Starts everything on 127.0.0.1 in a private temp directory (bench.stack: SeaweedFS, a static nginx
origin, plain mitmdump and mitmdump with the addon, nginx as a reference proxy; scenarios add their
own processes) and runs the scenarios (bench.scenarios), each for a fixed, short time or a fixed
number of requests with wrk or the asyncio client (bench.load). Every figure is a ratio or
percentile measured side by side in this run. Prints one table (also written to
bench/out/results.md, raw numbers to bench/out/results.json), with its target beside each row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.report import OUT, Report, log
from bench.scenarios.coldhit import scenario_coldhit
from bench.scenarios.hit import reference_hit_rows, scenario_hit
from bench.scenarios.lag import scenario_lag
from bench.scenarios.largehit import scenario_largehit
from bench.scenarios.memory import scenario_memory
from bench.scenarios.miss import reference_miss_rows, scenario_miss
from bench.scenarios.missttfb import scenario_missttfb
from bench.scenarios.profiles import record_profiles
from bench.scenarios.scaleout import scenario_scaleout
from bench.scenarios.singleflight import scenario_singleflight
from bench.scenarios.state.curves import AXES, scenario_state, three_points
from bench.services.install import ensure_debian_packages, ensure_py_spy
from bench.services.machine import OtherLoad
from bench.services.processes import CpuPlan, Processes
from bench.stack import Stack, seed_hit_objects, start_stack

Scenario = Callable[[Stack, Report, float], None]  # (the stack, the report, --seconds)
SCENARIOS: dict[str, Scenario] = {
    "hit": scenario_hit,
    "coldhit": lambda stack, report, seconds: scenario_coldhit(stack, report),
    "miss": scenario_miss,
    "singleflight": lambda stack, report, seconds: scenario_singleflight(stack, report),
    "lag": scenario_lag,
    "memory": lambda stack, report, seconds: scenario_memory(stack, report),
    "largehit": lambda stack, report, seconds: scenario_largehit(stack, report),
    "state": scenario_state,
    "missttfb": lambda stack, report, seconds: scenario_missttfb(stack, report),
    "scaleout": scenario_scaleout,
}
# the profile runs before the scale-out, which unpins everything and leaves the first
# mitmdump+addon with thousands of write-backs to finish
PROFILE_BEFORE = "scaleout"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run (default 5)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--profile", action="store_true", help="also record py-spy profiles of the hit and miss paths")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, store data)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the proxy under test to its own CPU (see BENCHMARKS.md)")
    parser.add_argument("--with-script", action="append", default=[], metavar="FILE",
                        help="experiments: load FILE as another -s script after the addon in every "
                             "mitmdump+addon (e.g. bench/experiments/quiet_library_logs.py)")
    parser.add_argument("--state-quick", action="store_true",
                        help="scenario 10 at three points of each axis (its smallest, a middle one and its largest), "
                             "for a busy machine")
    parser.add_argument("--no-wait", action="store_true",
                        help="start at once, even if other processes keep the machine busy")
    args = parser.parse_args(argv)
    args.chosen = [s for s in args.only.split(",") if s]
    unknown = set(args.chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def run_scenarios(stack: Stack, report: Report, args: argparse.Namespace) -> None:
    """The chosen scenarios in SCENARIOS' order (the profile, when asked, before PROFILE_BEFORE),
    each one's time in results.json; then the reference rows they left."""
    for name, scenario in SCENARIOS.items():
        if name == PROFILE_BEFORE and args.profile:
            _timed(report, "profile", "profile", partial(record_profiles, stack, report, args.seconds, OUT))
        if name == "state" and args.state_quick:
            scenario = partial(scenario_state, axes=tuple(map(three_points, AXES)))
        if name in args.chosen:
            _timed(report, name, f"scenario {name}", partial(scenario, stack, report, args.seconds))
    reference_hit_rows(report)
    reference_miss_rows(report)


def _timed(report: Report, name: str, title: str, step: Callable[[], None]) -> None:
    began = time.monotonic()
    log(f"{title} ...")
    step()
    report.raw.setdefault("scenario_seconds", {})[name] = round(time.monotonic() - began, 1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def write_results(report: Report, elapsed: float, others: OtherLoad, pinning: str) -> None:
    """The table on stdout and in bench/out/results.md, the raw numbers in results.json."""
    mean_other, worst_other = others.summary()
    report.raw["elapsed_s"] = round(elapsed, 1)
    report.raw["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "pinning": pinning,
                             "other_processes_cores_mean": round(mean_other, 3),
                             "other_processes_cores_worst_5s": round(worst_other, 3)}
    table = report.table()
    notes = (f"whole run {elapsed:.0f} s; {pinning}; other processes on the machine used {mean_other:.2f} cores on "
             f"average (worst 5 s: {worst_other:.2f})")
    OUT.mkdir(exist_ok=True)
    failed = "".join(f"FAILED: {failure}\n" for failure in report.failures)
    (OUT / "results.md").write_text(table + "\n\n" + notes + "\n" + failed)
    (OUT / "results.json").write_text(json.dumps(report.raw, indent=2, default=str) + "\n")
    print(table)
    print(f"\n{notes}; raw numbers in {OUT / 'results.json'}")
    if mean_other > 0.1 or worst_other > 0.3:
        print("WARNING: the machine was busy with other work during the run; the figures are noisier than usual")
    for failure in report.failures:
        print(f"FAILED: {failure}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM/SIGHUP end the run through the finally blocks, as Ctrl-C does.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    began = time.monotonic()
    ensure_debian_packages()
    if args.profile:
        ensure_py_spy()
    with_scripts = tuple(str(Path(f).resolve()) for f in args.with_script)
    os.chdir(Path(__file__).resolve().parent.parent)
    tmp = Path(tempfile.mkdtemp(prefix="backorigin-bench-"))
    processes = Processes()
    report = Report()
    stack: Stack | None = None
    others = OtherLoad().start()
    try:
        if not args.no_wait and (waited := others.wait_quiet()) > 4:
            log(f"waited {waited:.0f} s for other processes to quieten down")
        stack = start_stack(tmp, processes, CpuPlan.make(not args.no_pin), with_scripts)
        seed_hit_objects(stack)
        run_scenarios(stack, report, args)
    finally:
        others.stop()
        processes.close()
        if stack is not None:
            stack.store.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    write_results(report, time.monotonic() - began, others, stack.cpus.describe() if stack else "")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
