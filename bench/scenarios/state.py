"""Scenario 10 of `make bench`: remembered state costs no request anything (issue 26).

Three mitmdump+addon processes side by side in front of the same store, with the merged listing
on (the bucket's Mirror rule points at another bucket of the store, an S3 origin of 2,000 keys):
one that remembers nothing; one whose spool holds 1,000,000 tombstones (a journal written in the
real format before it starts, which it reads and indexes as it would its own); one that
remembers 100,000 origin 404s (bench/experiments/remembered_404s.py fills its real NotFound at
start). Each is asked, in alternating rounds of sequential requests on a kept-alive connection,
for a hit (1 KiB), a PUT (1 KiB) and a merged-listing page of 1,000 keys; the figure is the
median latency with the state divided by the median without, so 1.00 means the state costs
nothing.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.report import log
from bench.services.mitmdump import Mitmdump
from bench.services.processes import Processes, listen_ports

TOMBSTONES = 1_000_000
REMEMBERED = 100_000
LISTED_KEYS = 2000
ORIGIN_BUCKET = "bench-listed"
REMEMBER_SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "remembered_404s.py"


def write_journal(folder: Path, bucket: str, count: int) -> None:
    """`count` tombstones of keys the listing never reaches, and one in every hundred listed keys."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "journal", "wb") as out:
        for i in range(count):
            out.write(b'{"op": "add", "bucket": "%s", "key": "gone/%07d"}\n' % (bucket.encode(), i))
        for i in range(0, LISTED_KEYS, 100):
            out.write(b'{"op": "add", "bucket": "%s", "key": "listed/%05d"}\n' % (bucket.encode(), i))


def timed(port: int, method: str, path: str, body: bytes, rounds: int) -> list[float]:
    """Seconds of each of `rounds` sequential requests on one kept-alive connection (all 2xx)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    seconds = []
    try:
        for i in range(rounds):
            started = time.perf_counter()
            connection.request(method, path.replace("{i}", str(i)), body=body or None)
            answer = connection.getresponse()
            answer.read()
            seconds.append(time.perf_counter() - started)
            if answer.status >= 300:
                raise RuntimeError(f"{method} {path} on :{port}: {answer.status}")
    finally:
        connection.close()
    return seconds


def side_by_side(ports: dict[str, int], ask: Callable[[int, int], list[float]], rounds: int) -> dict[str, float]:
    """Median seconds per proxy, asked in alternating slices (ABCCBA...) so drift falls on all alike."""
    samples: dict[str, list[float]] = {name: [] for name in ports}
    order = list(ports)
    for turn in range(4):
        for name in order if turn % 2 == 0 else reversed(order):
            samples[name] += ask(ports[name], rounds)
    return {name: statistics.median(values) for name, values in samples.items()}


def scenario_state(stack: Any, report: Any, bucket: str, seconds: float) -> None:
    store = stack.store
    s3 = store.client()
    store.create_buckets([ORIGIN_BUCKET])
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=ORIGIN_BUCKET, Key=f"listed/{i:05d}", Body=b"o"), range(LISTED_KEYS)))
    rules = stack.tmp / "rules-state.json"
    rule = {"RuleNumber": 1, "Condition": {"HttpErrorCodeReturnedEquals": 404},
            "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"{store.endpoint}/{ORIGIN_BUCKET}/"}}
    rules.write_text(json.dumps({"Buckets": [{"Name": bucket, "RoutingRules": [rule]}]}))
    write_journal(stack.tmp / "spool-tombstones" / "tombstones", bucket, TOMBSTONES)
    processes: Processes = stack.processes
    ports = dict(zip(("none", "tombstones", "404s"), listen_ports(3), strict=True))
    scripts = {"404s": (str(REMEMBER_SCRIPT),)}
    started = time.monotonic()
    proxies = {
        name: Mitmdump(f"state-{name}", store.endpoint, port, stack.tmp, stack.tmp / f"confdir-state-{name}", rules,
                       {"backorigin_merged_listing": "true", "backorigin_spool_dir": str(stack.tmp / f"spool-{name}")},
                       cpus=stack.cpus.proxy, ca_from=stack.confdir, extra_scripts=scripts.get(name, ())).start(processes, 180)
        for name, port in ports.items()
    }
    log(f"three proxies up in {time.monotonic() - started:.0f} s (one read {TOMBSTONES:,} tombstones at start)")
    deadline = time.monotonic() + 120
    while f"remembered {REMEMBERED} origin 404s" not in proxies["404s"].log():  # filled as it starts running
        if time.monotonic() > deadline or "Traceback" in proxies["404s"].log():
            raise RuntimeError("the 404s proxy does not remember them: " + proxies["404s"].log()[-2000:])
        time.sleep(0.5)
    rounds = max(20, int(seconds * 40))
    asks = {
        "hit (1 KiB)": lambda port, n: timed(port, "GET", f"/{bucket}/small/hit", b"", n),
        "PUT (1 KiB)": lambda port, n: timed(port, "PUT", f"/{bucket}/state/put-{port}-{{i}}", b"p" * 1024, n),
        "merged-listing page (1,000 keys)": lambda port, n: timed(port, "GET", f"/{bucket}?list-type=2&prefix=listed/", b"",
                                                                   max(5, n // 10)),
    }
    raw: dict[str, dict[str, float]] = {}
    for what, ask in asks.items():
        ask(ports["none"], 3)  # warm-up: connections, clients, the listing's key order
        medians = side_by_side(ports, ask, rounds)
        raw[what] = {name: round(value * 1000, 3) for name, value in medians.items()}
        base = medians["none"]
        report.add("10", "state", f"{what}: 1,000,000 tombstones ÷ none, 100,000 remembered 404s ÷ none (median)",
                   f"{medians['tombstones'] / base:.2f}, {medians['404s'] / base:.2f} ({base * 1000:.2f} ms without)",
                   "1.00 (no request pays for remembered state)")
    report.raw["state_ms"] = raw
    for proxy in proxies.values():
        processes.stop(proxy.process)
