"""wrk for a fixed time against one URL, its figures read from one machine-readable line that
bench/load/wrk_report.lua prints (percentiles from wrk's own histogram)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.services.processes import die_with_parent

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
KiB = 1 << 10


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    errors: int  # socket errors + timeouts
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_request(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0

    def plausible_size(self, size: int) -> bool:
        """Body plus headers per response (wrk also counts bytes of responses cut off at the end)."""
        return size <= self.bytes_per_request <= size * 1.1 + 4 * KiB

    def raw(self) -> dict[str, float]:
        """For results.json."""
        return {**asdict(self), "rps": round(self.rps, 1), "bytes_per_request": round(self.bytes_per_request)}


def wrk(url: str, connections: int, seconds: float, unique_prefix: str | None = None, threads: int = 1) -> WrkResult:
    """wrk for `seconds` against url; with unique_prefix every request asks a new path
    (prefix + thread + counter), so every GET of a missing key is a fresh miss."""
    env = {**os.environ, "BENCH_PATH_PREFIX": unique_prefix or ""}
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "20s",
        "-s", str(WRK_SCRIPT), url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 60,
                          preexec_fn=die_with_parent)  # inherits the bench's own CPU affinity
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            raw = json.loads(line[6:])
            return WrkResult(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                bytes=raw["bytes"],
                errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
                non_2xx=raw["status"],
                p50_ms=raw["p50"] / 1000,
                p90_ms=raw["p90"] / 1000,
                p99_ms=raw["p99"] / 1000,
                max_ms=raw["max"] / 1000,
                mean_ms=raw["mean"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
