"""`python -m bench.clients`: nginx on 127.0.0.1 (HTTP and HTTPS), every candidate measured on every
workload, interleaved, then the checklist; prints Markdown tables."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.clients.ask import Candidate
from bench.clients.checklist import PACING, Servers, checklist
from bench.clients.measure import KiB, MiB, Sample, Workload, candidates, measure, workloads
from bench.clients.servers import Recorder, RecordingProxy, make_certificates, nginx_config
from bench.report import log
from bench.services.machine import cpu_seconds, descendants
from bench.services.nginx import Nginx, nginx_binary
from bench.services.processes import CpuPlan, Processes, listen_ports

Samples = dict[tuple[str, str], list[Sample]]  # (workload, client) -> one sample per repetition


def _busy_seconds() -> float:
    """CPU seconds every process of the machine used so far (idle and iowait left out)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / os.sysconf("SC_CLK_TCK")


def _own_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:  # gone meanwhile
            continue
    return total


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _spread(values: list[float], digits: int) -> str:
    middle = statistics.median(values)
    if len(values) < 2:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


async def _measure_all(clients: list[Candidate], chosen: list[Workload], reps: int) -> Samples:
    samples: Samples = {}
    for rep in range(reps):
        for workload in chosen:
            order = clients[rep % len(clients):] + clients[:rep % len(clients)]  # a different client first each time
            for client in order:
                sample = await measure(client, workload)
                samples.setdefault((workload.name, client.name), []).append(sample)
                log(f"rep {rep + 1}/{reps} {workload.name:9} {client.name:16} {sample.cpu_ms:7.3f} ms CPU "
                    f"{sample.per_second:9.1f} /s")
    return samples


def _tables(samples: Samples, names: list[str], chosen: list[Workload]) -> list[str]:
    def median(workload: Workload, name: str, figure: Callable[[Sample], float]) -> float:
        return statistics.median([figure(sample) for sample in samples[workload.name, name]])

    tables: list[tuple[str, Callable[[Workload, str], str]]] = [
        ("CPU of this process, ms", lambda w, n: _spread([x.cpu_ms for x in samples[w.name, n]], 3)),
        ("Requests/s (MiB/s for 8 MiB)", lambda w, n: f"{median(w, n, lambda x: x.per_second):.0f}"),
        (f"CPU ÷ {names[0]}'s", lambda w, n: f"{median(w, n, lambda x: x.cpu_ms) / median(w, names[0], lambda x: x.cpu_ms):.2f}"),
        ("Of the CPU, in the kernel (system time), ms", lambda w, n: f"{median(w, n, lambda x: x.system_ms):.3f}"),
    ]
    out = []
    for title, cell in tables:
        out += [f"**{title}**", "", _table(["workload", *names], [[w.label, *(cell(w, n) for n in names)] for w in chosen]), ""]
    return out


async def _checklist_table(clients: list[Candidate], http_port: int, https_port: int, context: ssl.SSLContext,
                           gz_body: bytes) -> list[str]:
    recorder, proxy = await Recorder().start(), await RecordingProxy().start()
    try:
        servers = Servers(http_port, https_port, context, recorder, proxy, gz_body)
        found = {c.name: await checklist(c, servers) for c in clients if not getattr(c, "reference", False)}
    finally:
        await recorder.close()
        await proxy.close()
    checked = list(found)
    rows = [[feature, *(found[n][feature] for n in checked)] for feature in found[checked[0]]]
    rows.append(["pacing hook (backfill)", *(PACING[n] for n in checked)])
    return ["**What the addon needs**", "", _table(["feature", *checked], rows)]


async def bench(args: argparse.Namespace, http_port: int, https_port: int, ca_file: Path, gz_body: bytes,
                nginx_master: int) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    clients = candidates()
    chosen = [w for w in workloads(http_port, https_port, context, args.scale) if not args.only or w.name in args.only]
    ours = [os.getpid(), nginx_master]
    busy, own, started = _busy_seconds(), _own_seconds([*ours, *descendants(nginx_master)]), time.monotonic()
    try:
        samples = await _measure_all(clients, chosen, args.reps)
        own_used = _own_seconds([*ours, *descendants(nginx_master)]) - own
        others = ((_busy_seconds() - busy) - own_used) / (time.monotonic() - started)
        out = [f"Median of {args.reps} repetitions (min-max), clients interleaved; nginx and this process on separate CPUs "
               f"unless --no-pin; other load on the machine meanwhile: {max(others, 0.0):.2f} cores. Per request; per MiB "
               "for the 8 MiB rows.", ""]
        out += _tables(samples, [c.name for c in clients], chosen)
        if not args.no_checklist:
            out += await _checklist_table(clients, http_port, https_port, context, gz_body)
        return "\n".join(out)
    finally:
        for client in clients:
            await client.aclose()


def _serve(tmp: Path) -> tuple[Path, Path, Path, bytes]:
    """The files nginx serves, and the certificates: (CA, server certificate, key, the gzip body)."""
    os.chmod(tmp, 0o755)
    root = tmp / "www"
    root.mkdir()
    (root / "small.bin").write_bytes(os.urandom(KiB))
    (root / "large.bin").write_bytes(os.urandom(8 * MiB))
    gz_body = gzip.compress(b"backorigin " * 1000)
    (root / "body.gz").write_bytes(gz_body)
    return *make_certificates(tmp), gz_body


def main(argv: Sequence[str] | None = None) -> int:
    from bench import clients  # the package: its docstring is the description

    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=(clients.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every workload (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's request count (default 1)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help="comma-separated workloads: small,small8,404,large,tls-small,tls-large")
    parser.add_argument("--no-pin", action="store_true", help="do not put nginx and this process on separate CPUs")
    parser.add_argument("--no-checklist", action="store_true", help="measure only")
    args = parser.parse_args(argv)
    if not Path(nginx_binary()).exists():
        raise SystemExit("bench.clients: needs nginx (apt-get install nginx)")
    plan = CpuPlan.make(not args.no_pin)
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as folder:
        tmp = Path(folder)
        ca, certificate, key, gz_body = _serve(tmp)
        http_port, https_port = listen_ports(2)
        try:
            nginx = Nginx("clients", tmp / "nginx", nginx_config(http_port, https_port, tmp / "www", certificate, key),
                          cpus=plan.rest).start(processes, [http_port, https_port])
            if plan.proxy:
                os.sched_setaffinity(0, plan.proxy)
            log(f"nginx on 127.0.0.1:{http_port} (HTTP) and :{https_port} (HTTPS); {plan.describe().replace('proxy', 'client')}")
            assert nginx.process is not None
            report = asyncio.run(bench(args, http_port, https_port, ca, gz_body, nginx.process.pid))
        finally:
            processes.close()
    print(report)
    return 0
