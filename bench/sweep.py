"""The sweep's cost: keys per second and CPU per key of `backorigin backfill`, this tree's code
against an earlier commit's, side by side in one run, and N shards at once against one process.

    .venv/bin/python -m bench.sweep --before main [--keys 2000] [--rounds 3] [--shards 4] [--profile]

An embedded SeaweedFS is the store and a second one, with SigV4 on, the S3 origin holding
`--keys` small objects (tests/sweep_support.py). Every run copies all of them into a fresh
bucket with `--origin-listing`, then sweeps that bucket again with a fresh state folder (every
key already there, the last pass of a migration), each as a process of its own (`python -m backorigin`, the variant's
code first on PYTHONPATH); its CPU is that process's user + system time (wait4). A run over an
empty key list measures the start-up (imports, clients), which "CPU per key" leaves out.
`--profile` records one more run of each variant with py-spy (raw stacks in bench/out/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from bench.profile import summarise
from bench.services.install import ensure_py_spy
from tests.support import REPO, write_rules
from tests.sweep_support import s3_origin_rule, start_s3_origin, stop_quickly

OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu: float  # user + system seconds of the backfill process(es)
    system: float  # of which system
    keys: int
    copied: int
    present: int = 0


def variant_code(revision: str, folder: Path) -> Path:
    """The addon/ folder as it is at `revision` (git archive), for PYTHONPATH."""
    archive = folder / "code.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "archive", revision, "addon"], cwd=REPO, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "addon"


def backfill_argv(rules: Path, store: EmbeddedStore, bucket: str, work: Path, concurrency: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "backorigin", "backfill", "--rules", str(rules), "--store", store.endpoint,
            "--bucket", bucket, "--concurrency", str(concurrency), "--state", str(work / "state"),
            "--report", str(work / "report.json"), *more]


def run_processes(argvs: list[list[str]], code: Path, timeout: float = 600) -> tuple[float, float, float]:
    """Start them all at once; the wall time until the last one ends, their CPU seconds added up
    and the system part of it."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.monotonic()
    processes = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for argv in argvs]
    cpu = system = 0.0
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.stderr is not None
        errors = process.stderr.read().decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argvs[processes.index(process)])} exited with {process.returncode}:\n{errors}")
        cpu += usage.ru_utime + usage.ru_stime
        system += usage.ru_stime
        if time.monotonic() - started > timeout:
            raise RuntimeError("the sweep took too long")
    return time.monotonic() - started, cpu, system


class Bench:
    def __init__(self, folder: Path, keys: int, concurrency: int) -> None:
        self.folder = folder
        self.keys = keys
        self.concurrency = concurrency
        self.store = EmbeddedStore(folder / "store", free_ports(1, with_grpc=True)[0])
        self.origin: EmbeddedStore | None = None
        self.buckets: list[str] = []
        self.rules = folder / "rules.json"

    def __enter__(self) -> Bench:
        self.store.start()
        self.origin = start_s3_origin(self.folder / "origin", self.keys)
        return self

    def __exit__(self, *exc: object) -> None:
        for store in (self.store, self.origin):
            if store is not None:
                stop_quickly(store)

    def bucket(self, name: str) -> str:
        """A fresh bucket mirrored from the S3 origin."""
        assert self.origin is not None
        self.buckets.append(name)
        self.store.create_buckets([name])
        write_rules(self.rules, {bucket: [s3_origin_rule(self.origin)] for bucket in self.buckets})
        return name

    def backfill(self, name: str, code: Path, shards: int = 1, profile: Path | None = None, bucket: str | None = None) -> Run:
        """A backfill into a fresh bucket (or into `bucket` again, with a fresh state: every key already there)."""
        bucket = bucket or self.bucket(name)
        argvs = []
        for index in range(shards):
            work = self.folder / f"{name}-{index}"
            shard = ["--shard", f"{index}/{shards}"] if shards > 1 else []  # the same concurrency in all
            argvs.append(backfill_argv(self.rules, self.store, bucket, work, self.concurrency // shards, "--origin-listing", *shard))
        if profile is not None:
            # --gil: samples of the thread holding the GIL, Python's CPU (py-spy's idle filter misses pool threads here)
            spy = [ensure_py_spy(), "record", "--rate", "250", "--gil", "--full-filenames", "--format", "raw", "--output", str(profile)]
            argvs = [[*spy, "--", *argv] for argv in argvs]
        seconds, cpu, system = run_processes(argvs, code)
        reports = [json.loads((self.folder / f"{name}-{index}" / "report.json").read_text()) for index in range(shards)]
        return Run(seconds, cpu, system, sum(r["keys"] for r in reports), sum(r["counts"]["copied"] for r in reports),
                   sum(r["counts"]["already-present"] for r in reports))

    def start_up(self, name: str, code: Path) -> float:
        """CPU seconds of a backfill over no key at all."""
        bucket = self.bucket(name)
        empty = self.folder / "no-keys.txt"
        empty.write_text("")
        _, cpu, _ = run_processes([backfill_argv(self.rules, self.store, bucket, self.folder / name, 1, "--keys", str(empty))], code)
        return cpu


def describe(runs: list[Run], start_up: float) -> dict[str, float]:
    keys = runs[0].keys
    return {
        "keys/s": statistics.median(r.keys / r.seconds for r in runs),
        "seconds": statistics.median(r.seconds for r in runs),
        "CPU ms/key": statistics.median(1000 * r.cpu / r.keys for r in runs),
        "CPU ms/key past start-up": statistics.median(1000 * (r.cpu - start_up) / keys for r in runs),
        "start-up CPU s": start_up,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=None, metavar="REV", help="also run the code of this commit (e.g. main)")
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, interleaved (median reported)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--shards", type=int, default=4, help="also N shards at once with this tree's code (0: not)")
    parser.add_argument("--profile", action="store_true", help="one more run of each variant under py-spy")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as temporary:
        folder = Path(temporary)
        variants = {"after": REPO / "addon"}
        if args.before:
            (folder / "before").mkdir()
            variants = {"before": variant_code(args.before, folder / "before"), **variants}
        with Bench(folder, args.keys, args.concurrency) as bench:
            start_up = {name: bench.start_up(f"{name}-empty", code) for name, code in variants.items()}
            runs: dict[str, list[Run]] = {name: [] for name in variants}
            runs.update({f"{name}, every key already there": [] for name in variants})
            for round_number in range(args.rounds):
                for name, code in variants.items():
                    run = bench.backfill(f"{name}-{round_number}", code)
                    again = bench.backfill(f"{name}-{round_number}-again", code, bucket=f"{name}-{round_number}")
                    assert run.copied == args.keys and again.present == args.keys, (run, again)
                    runs[name].append(run)
                    runs[f"{name}, every key already there"].append(again)
                    print(f"{name} round {round_number}: {run.keys / run.seconds:.0f} keys/s, "
                          f"{1000 * run.cpu / run.keys:.2f} ms CPU/key ({1000 * run.system / run.keys:.2f} system); "
                          f"again: {again.keys / again.seconds:.0f} keys/s", file=sys.stderr)
            table = {name: describe(found, start_up[name.split(",")[0]]) for name, found in runs.items()}
            if args.shards > 1:
                sharded = [bench.backfill(f"shards-{n}", variants["after"], args.shards) for n in range(args.rounds)]
                assert all(run.copied == args.keys for run in sharded), sharded
                table[f"after, {args.shards} shards at once"] = describe(sharded, args.shards * start_up["after"])
            if args.profile:
                for name, code in variants.items():
                    raw = OUT / f"profile-sweep-{name}.txt"
                    bench.backfill(f"{name}-profile", code, profile=raw)
                    print(summarise(raw)["text"])
    print(f"{args.keys} keys, --concurrency {args.concurrency}, {args.rounds} rounds, {os.cpu_count()} CPUs; median of rounds")
    columns = list(next(iter(table.values())))
    print("| variant | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, figures in table.items():
        print(f"| {name} | " + " | ".join(f"{value:.2f}" for value in figures.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
