"""Scenario 8, cold hits: objects in the store that the proxy has never seen, each read once (issue
21). `keys` stored 4 KiB objects per proxy, each read once (GET, then HEAD; one connection, then 8),
through a fresh plain mitmdump and a fresh mitmdump+addon whose upstream is a counting relay (nginx,
one log line per request) in front of the store. Figures: store requests per client request, and
latency addon ÷ plain."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

from bench.load import client as loadgen
from bench.load.downloads import open_connections
from bench.report import Report, log
from bench.services.nginx import STORE_LOG, Nginx, StoreLog, StoreRequest, counting_relay_config
from bench.services.processes import listen_ports
from bench.stack import BUCKET, KiB, Stack

COLD_KEYS = 300  # keys per proxy, for each method and concurrency (each read exactly once)
COLD_SIZE = 4 * KiB
COLD_ORDER = ("plain", "addon", "addon", "plain")  # slices of COLD_KEYS / 2 keys each


def seed_objects(stack: Stack, keys: list[str], size: int) -> None:
    """PUT `keys` straight into the store (not through a proxy: no metadata, nothing seen)."""
    client = stack.store.client()
    body = os.urandom(size)

    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))


async def _read_each(port: int, method: str, warm: list[str], paths: list[str], store_log: StoreLog
                     ) -> tuple[list[loadgen.Answer], list[StoreRequest]]:
    """One connection per `warm` path, opened and used once on it (connections to the proxy and
    from it to the store set up); then the store log is marked and the connections read each of
    `paths` once, between them. Returns the answers and the store requests made meanwhile."""
    connections = await open_connections(port, len(warm))
    try:
        async with asyncio.timeout(300):
            await asyncio.gather(*(c.request(method, path) for c, path in zip(connections, warm, strict=True)))
            await asyncio.sleep(0.3)  # the warm-up's log lines are written
            store_log.mark()
            todo = deque(paths)
            answers: list[loadgen.Answer] = []

            async def reader(connection: loadgen.Connection) -> None:
                while todo:
                    answers.append(await connection.request(method, todo.popleft()))

            await asyncio.gather(*(reader(c) for c in connections))
        await asyncio.sleep(0.3)  # nginx logs a request as its answer ends
        return answers, store_log.since_mark()
    finally:
        for connection in connections:
            connection.close()


def _keys(method: str, connections: int, index: int, who: str, half: int) -> tuple[list[str], list[str]]:
    """The keys of one slice: one warm-up key per connection, then `half` keys read once."""
    stem = f"cold/{method.lower()}-c{connections}-{index}{who}"
    return [f"{stem}-warm{i}" for i in range(connections)], [f"{stem}-{i}" for i in range(half)]


def _read_case(ports: dict[str, int], method: str, connections: int, half: int, store_log: StoreLog
               ) -> tuple[dict[str, list[float]], dict[str, list[StoreRequest]], list[str]]:
    """Every slice of one case in COLD_ORDER: latencies (ms) and store requests by proxy, wrong answers."""
    latencies: dict[str, list[float]] = {"plain": [], "addon": []}
    asked: dict[str, list[StoreRequest]] = {"plain": [], "addon": []}
    wrong: list[str] = []
    for index, who in enumerate(COLD_ORDER):
        warm, measured = _keys(method, connections, index, who, half)
        answers, seen = asyncio.run(_read_each(ports[who], method, [f"/{BUCKET}/{k}" for k in warm],
                                               [f"/{BUCKET}/{k}" for k in measured], store_log))
        latencies[who] += [a.seconds * 1000 for a in answers]
        asked[who] += seen
        wrong += [f"{who}: {a.status}, {a.size} bytes" for a in answers
                  if a.status != 200 or a.size != (COLD_SIZE if method == "GET" else 0)
                  or a.headers.get("content-length") != str(COLD_SIZE)]
    return latencies, asked, wrong


def _case_rows(report: Report, keys: int, method: str, connections: int, latencies: dict[str, list[float]],
               asked: dict[str, list[StoreRequest]], wrong: list[str]) -> dict[str, object]:
    """One case's two rows (store requests per request; latency addon ÷ plain); its raw figures."""
    per_request = {who: sum(r.attempts for r in asked[who]) / max(1, len(latencies[who])) for who in asked}
    p50 = {who: loadgen.percentile(v, 50) for who, v in latencies.items()}
    p99 = {who: loadgen.percentile(v, 99) for who, v in latencies.items()}
    kinds = {who: dict(Counter(f"{r.method} {r.status}{' ' + r.range if r.range else ''}" for r in asked[who]))
             for who in asked}
    case = f"{method.lower()}-c{connections}"
    conns = "one connection" if connections == 1 else f"{connections} connections at once"
    if round(per_request["plain"], 2) != 1.0:
        log(f"cold hits {case}: plain mitmdump made {per_request['plain']:.2f} store requests per {method}; the count is off")
    failed = f"{len(wrong)} wrong answers to cold {method}s, e.g. {wrong[:3]}" if wrong else ""
    report.add("8", "cold hits", f"{keys} stored {COLD_SIZE // KiB} KiB objects, each {method} once ({conns}): "
               f"store requests per {method} (counting relay), mitmdump+addon (plain mitmdump)",
               f"{per_request['addon']:.2f} ({per_request['plain']:.2f})", "1.00",
               round(per_request["addon"], 2) <= 1.0, failed=failed)
    r50, r99 = p50["addon"] / p50["plain"], p99["addon"] / p99["plain"]
    report.add("8", "cold hits", f"the same: latency addon ÷ plain mitmdump, p50 / p99 "
               f"({p50['addon']:.2f} ÷ {p50['plain']:.2f} ms; {p99['addon']:.2f} ÷ {p99['plain']:.2f} ms)",
               f"{r50:.2f} / {r99:.2f}", "p50 ≤ 1.10", r50 <= 1.10)
    log(f"cold hits {case}: store requests per {method} addon {per_request['addon']:.2f} plain "
        f"{per_request['plain']:.2f} ({kinds['addon']}); p50 addon {p50['addon']:.2f} ms plain {p50['plain']:.2f} ms")
    return {"requests": {who: len(v) for who, v in latencies.items()}, "store_requests_per_request": per_request,
            "store_requests": kinds, "p50_ms": p50, "p99_ms": p99,
            "p90_ms": {w: loadgen.percentile(v, 90) for w, v in latencies.items()}, "wrong": wrong[:10]}


def scenario_coldhit(stack: Stack, report: Report, keys: int = COLD_KEYS) -> None:
    relay_port, plain_port, addon_port = listen_ports(3)
    relay = Nginx("store-relay", stack.tmp / "nginx-store-relay", counting_relay_config(relay_port, stack.store.s3_port))
    relay.start(stack.processes, [relay_port])
    store_log = StoreLog(relay.workdir / STORE_LOG)
    upstream = f"http://127.0.0.1:{relay_port}"
    plain = stack.proxy("cold-plain", plain_port, upstream=upstream)
    addon = stack.proxy("cold-addon", addon_port, stack.rules, upstream=upstream)
    half = keys // 2
    cases = [(method, connections) for method in ("GET", "HEAD") for connections in (1, 8)]
    names = [key for method, connections in cases for index, who in enumerate(COLD_ORDER)
             for part in _keys(method, connections, index, who, half) for key in part]
    log(f"cold hits: storing {len(names)} objects of {COLD_SIZE // KiB} KiB")
    began = time.monotonic()
    seed_objects(stack, names, COLD_SIZE)
    raw: dict[str, object] = {"seed_s": round(time.monotonic() - began, 1)}
    try:
        plain.start(stack.processes)
        addon.start(stack.processes)
        stack.beside_the_store(addon)
        ports = {"plain": plain.port, "addon": addon.port}
        for method, connections in cases:
            latencies, asked, wrong = _read_case(ports, method, connections, half, store_log)
            raw[f"{method.lower()}-c{connections}"] = _case_rows(report, keys, method, connections, latencies, asked, wrong)
    finally:
        stack.processes.stop(addon.process)
        stack.processes.stop(plain.process)
        stack.processes.stop(relay.process)
    report.raw["cold_hits"] = raw
