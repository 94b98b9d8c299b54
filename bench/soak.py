"""Soak test: many concurrent clients for a fixed time over a mix of hits, misses, failures
and large objects, then checks that nothing was lost or stored partially and that memory
stayed flat. Everything runs on loopback and stops by itself.

    .venv/bin/python -m bench.soak                     # 200 clients, 60 s (the issue's figures)
    .venv/bin/python -m bench.soak --clients 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.origin_server import ScriptedOrigin, body_for
from tests.support import Mitmdump, mirror_rule, write_rules

BUCKET = "soak-bucket"
LARGE = 9 * 1024 * 1024  # over the 8m max_inline used here: streamed to the client as it arrives
# kind -> (share of requests, expected statuses)
MIX = {"hit": (0.45, {200}), "miss": (0.35, {200}), "missing": (0.08, {404}), "failure": (0.115, {424}), "large": (0.005, {200})}


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def client_loop(http: httpx.AsyncClient, base: str, hits: list[str], deadline: float, run: str,
                      results: Counter, unexpected: list, mirrored: set[str]) -> None:
    kinds, weights = zip(*((k, share) for k, (share, _) in MIX.items()), strict=True)
    while time.monotonic() < deadline:
        kind = random.choices(kinds, weights)[0]
        key = {
            "hit": lambda: random.choice(hits),
            "miss": lambda: f"ok/{run}/{uuid.uuid4().hex}",
            "missing": lambda: f"missing/{run}/{uuid.uuid4().hex}",
            "failure": lambda: f"error500/{run}/{uuid.uuid4().hex}",
            "large": lambda: f"sized/{LARGE}/{run}/{uuid.uuid4().hex}",
        }[kind]()
        status: int | str  # the HTTP status, or the name of the transport error
        try:
            answer = await http.get(f"{base}/{BUCKET}/{key}")
            status = answer.status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        results[(kind, status)] += 1
        if status not in MIX[kind][1]:
            unexpected.append((kind, key, status))
        elif kind in ("miss", "large"):
            mirrored.add(key)


async def soak(proxy: Mitmdump, clients: int, seconds: float, hits: list[str], run: str) -> dict:
    results: Counter = Counter()
    unexpected: list = []
    mirrored: set[str] = set()
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    assert proxy.process is not None, "soak() needs a started proxy"
    pid = proxy.process.pid
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as http:

        async def sample_memory() -> None:
            while time.monotonic() < deadline:
                samples.append(rss_mib(pid)[0])
                await asyncio.sleep(1)

        await asyncio.gather(
            sample_memory(),
            *(client_loop(http, proxy.url, hits, deadline, run, results, unexpected, mirrored) for _ in range(clients)),
        )
    return {"results": results, "unexpected": unexpected, "mirrored": mirrored, "rss_samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backorigin-soak-"))
    store = EmbeddedStore(work / "store", free_ports(1, with_grpc=True)[0])
    origin = ScriptedOrigin().start()
    proxy = None
    try:
        store.start()
        store.create_buckets([BUCKET])
        s3 = store.client()
        hits = [f"hit/{i}" for i in range(50)]
        for key in hits:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"stored object " * 64)
        rules = write_rules(work / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")]})
        proxy = Mitmdump(f"reverse:{store.endpoint}", rules, work / "proxy", {
            "backorigin_max_inline": "8m", "flow_detail": "0", "backorigin_writeback_queue": "100000",
            "backorigin_shutdown_timeout": "300",
        }).start()
        assert proxy.process is not None
        start_rss = rss_mib(proxy.process.pid)[0]
        run = uuid.uuid4().hex[:8]
        print(f"soak: {args.clients} clients for {args.seconds:g} s against {proxy.url} ...", flush=True)
        started = time.monotonic()
        outcome = asyncio.run(soak(proxy, args.clients, args.seconds, hits, run))
        elapsed = time.monotonic() - started
        end_rss, peak_rss = rss_mib(proxy.process.pid)
        stop_status = proxy.stop(timeout=600)  # drains every pending write-back
        spool = proxy.spool
        lost = sorted(key for key in outcome["mirrored"] if not _stored_correctly(s3, key))
        total = sum(outcome["results"].values())
        samples = outcome["rss_samples"]
        report = {
            "clients": args.clients,
            "seconds": round(elapsed, 1),
            "requests": total,
            "requests_per_second": round(total / elapsed, 1),
            "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(outcome["results"].items(), key=str)},
            "unexpected_answers": len(outcome["unexpected"]),
            "objects_mirrored": len(outcome["mirrored"]),
            "objects_lost_or_wrong": len(lost),
            "spool_left_over": len(list(spool.glob("*.json"))),
            "spool_failed": len(list((spool / "failed").glob("*.json"))),
            "proxy_exit_status": stop_status,
            "rss_mib_start": round(start_rss, 1),
            "rss_mib_first_10s_max": round(max(samples[:10], default=0), 1),
            "rss_mib_last_10s_max": round(max(samples[-10:], default=0), 1),
            "rss_mib_end": round(end_rss, 1),
            "rss_mib_peak": round(peak_rss, 1),
        }
        print(json.dumps(report, indent=2))
        for example in outcome["unexpected"][:10]:
            print("unexpected:", example)
        for key in lost[:10]:
            print("lost or wrong:", key)
    finally:
        if proxy is not None:
            proxy.stop()
        origin.stop()
        store.stop()


def _stored_correctly(s3, key: str) -> bool:
    from tests.origin_server import sized_body

    try:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except Exception:
        return False
    expected = b"".join(sized_body(LARGE)) if key.startswith("sized/") else body_for(f"/dir1/{key}")
    return body == expected


if __name__ == "__main__":
    main()
