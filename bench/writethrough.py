"""What write-through costs and how fast the origin follows: a store and an S3 origin (two
SeaweedFS with SigV4, tests/writethrough_support.py) and the documented mitmdump in front of the
store, run on this machine.

    .venv/bin/python -m bench.writethrough [--writes 300] [--clients 8] [--seconds 20] [--backlog 2000]

1. The write's answer: sequential 1 KiB PUTs through the proxy, to a bucket without write-through
   and to one with it, interleaved (the ratio is what the journal costs), with the journal synced
   to the disk (the default) and without (backorigin_writethrough_fsync=false).
2. Sustained writes: `--clients` threads PUT 1 KiB objects for `--seconds`; writes acknowledged
   per second, the time from each write's answer to its origin copy (the proxy's histogram), and
   the backlog left when the clients stop.
3. Catch-up: the origin stopped, `--backlog` writes acknowledged, the origin started again; the
   time until the origin has them all, and the keys synced per second.
4. A large object: one 256 MiB PUT, the time until the origin has it, and the peak memory of the
   write-through worker (its body goes through a file, never memory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from backorigin.tools.embedded_store import EmbeddedStore
from tests.support import wait_for, write_back_worker
from tests.writethrough_support import BUCKET, PLAIN, Proxy, start_origin, start_the_store, write_through_rules

KiB, MiB = 1024, 1024 * 1024


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def answers(proxy: Proxy, writes: int) -> str:
    """Sequential PUTs to PLAIN and to BUCKET, interleaved: p50 and p99 of each and their ratio."""
    client, body = proxy.client(), b"x" * KiB
    times: dict[str, list[float]] = {PLAIN: [], BUCKET: []}
    for number in range(writes):
        for bucket, taken in times.items():
            started = time.perf_counter()
            client.put_object(Bucket=bucket, Key=f"latency/{number}", Body=body)
            taken.append(time.perf_counter() - started)
    proxy.wait_applied(within=600)
    plain, through = times[PLAIN], times[BUCKET]
    p50, p99 = (statistics.median(plain), statistics.median(through)), (percentile(plain, 0.99), percentile(through, 0.99))
    return (f"without {p50[0] * 1000:.1f} ms p50 / {p99[0] * 1000:.1f} ms p99; with {p50[1] * 1000:.1f} ms p50 / "
            f"{p99[1] * 1000:.1f} ms p99 (x{p50[1] / p50[0]:.2f} at p50)")


def writers(proxy: Proxy, bucket: str, clients: int, seconds: float) -> float:
    """`clients` threads PUT 1 KiB objects for `seconds`: writes acknowledged per second."""
    body, stop, done = b"y" * KiB, time.monotonic() + seconds, [0] * clients

    def writer(index: int) -> None:
        client = proxy.client()
        while time.monotonic() < stop:
            client.put_object(Bucket=bucket, Key=f"sustained/{index}/{done[index]}", Body=body)
            done[index] += 1

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sustained(proxy: Proxy, clients: int, seconds: float) -> str:
    worker = write_back_worker(proxy.pid, module="backorigin.writethrough.worker")
    proxy_cpu = cpu_seconds(proxy.pid)
    plain = writers(proxy, PLAIN, clients, seconds)
    proxy_cpu, plain_cpu = cpu_seconds(proxy.pid), cpu_seconds(proxy.pid) - proxy_cpu
    worker_cpu, synced = cpu_seconds(worker), proxy.metric("backorigin_writethrough_seconds_count")
    through = writers(proxy, BUCKET, clients, seconds)
    through_cpu = cpu_seconds(proxy.pid) - proxy_cpu
    left = proxy.metric("backorigin_writethrough_pending")
    drained = timed(lambda: proxy.wait_applied(within=900))
    per_key = (cpu_seconds(worker) - worker_cpu) / max(proxy.metric("backorigin_writethrough_seconds_count") - synced, 1)
    return (f"{clients} clients: {plain:.0f} writes/s acknowledged without write-through, {through:.0f} with; the proxy's "
            f"CPU per write {plain_cpu / (plain * seconds) * 1000:.1f} ms without, {through_cpu / (through * seconds) * 1000:.1f} ms "
            f"with; the worker's per key copied {per_key * 1000:.1f} ms; {left:.0f} not yet at the origin when they stopped, "
            f"all there {drained:.1f} s later; time to the origin {lag_buckets(proxy)}")


def lag_buckets(proxy: Proxy) -> str:
    """The share of writes at the origin within 0.1, 0.5, 1 and 5 s (the proxy's histogram, whole run)."""
    count = proxy.metric("backorigin_writethrough_seconds_count")
    shares = [f"{proxy.metric('backorigin_writethrough_seconds_bucket', le=bound) / count:.0%} within {bound} s"
              for bound in ("0.1", "0.5", "1.0", "5.0")]
    mean = proxy.metric("backorigin_writethrough_seconds_sum") / count
    return f"mean {mean:.2f} s; " + ", ".join(shares)


def catch_up(proxy: Proxy, origin: EmbeddedStore, backlog: int) -> str:
    client, body = proxy.client(), b"z" * KiB
    origin.stop()
    for number in range(backlog):
        client.put_object(Bucket=BUCKET, Key=f"backlog/{number}", Body=body)
    pending = proxy.metric("backorigin_writethrough_pending")
    before = proxy.metric("backorigin_writethrough_synced_total", action="put")
    origin.start()
    back = time.perf_counter()
    wait_for(lambda: proxy.metric("backorigin_writethrough_synced_total", action="put") > before, within=600, every=0.05)
    resumed = time.perf_counter()
    proxy.wait_applied(within=1800)
    ended = time.perf_counter()
    return (f"{pending:.0f} writes waiting; the origin back (its restart took part of it), the first copied "
            f"{resumed - back:.1f} s later (the paused origin's next try), all {ended - back:.1f} s later "
            f"({backlog / (ended - resumed):.0f} keys/s once going)")


def large(proxy: Proxy, folder: Path) -> str:
    path = folder / "large.bin"
    with open(path, "wb") as out:
        for _ in range(256):
            out.write(bytes(range(256)) * (MiB // 256))
    client = proxy.client()
    uploaded = timed(lambda: client.upload_file(str(path), BUCKET, "large/256MiB"))
    started = time.perf_counter()
    worker = write_back_worker(proxy.pid, module="backorigin.writethrough.worker")
    proxy.wait_applied(within=900)
    peak = next(int(line.split()[1]) for line in Path(f"/proc/{worker}/status").read_text().splitlines()
                if line.startswith("VmHWM:")) // 1024
    return (f"256 MiB uploaded through the proxy in {uploaded:.1f} s; at the origin {time.perf_counter() - started:.1f} s "
            f"after its answer; the worker's peak memory {peak} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writethrough", description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=2000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-writethrough-") as temporary:
        folder = Path(temporary)
        origin, store = start_origin(folder / "origin"), start_the_store(folder / "store")
        rules = write_through_rules(folder / "rules.json", origin.endpoint)
        try:
            for fsync in ("true", "false"):
                proxy = Proxy.of(folder / f"proxy-{fsync}", store, rules, backorigin_writethrough_fsync=fsync).start()
                try:
                    wait_for(lambda proxy=proxy: proxy.metric("backorigin_writethrough_pending") == 0)
                    print(f"answers, fsync {fsync}: {answers(proxy, arguments.writes)}", flush=True)
                    print(f"sustained, fsync {fsync}: {sustained(proxy, arguments.clients, arguments.seconds)}", flush=True)
                    if fsync == "true":
                        print(f"catch-up: {catch_up(proxy, origin, arguments.backlog)}", flush=True)
                        print(f"large: {large(proxy, folder)}", flush=True)
                finally:
                    proxy.stop()
        finally:
            store.stop()
            origin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
