"""What one kind of request costs a proxy, measured side by side: each proxy of an axis gets rounds
of sequential requests on one kept-alive connection, in alternating order (ABC, CBA, ABC, CBA), so
that drift and other load on the machine fall on all alike; the proxy's own CPU time for each round
is read from /proc (utime + stime of the mitmdump process, its threads included; the write-back
worker is a process of its own and is left out), and every request's latency is kept."""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.load.client import percentile
from bench.services.machine import cpu_seconds

ROUNDS = 4


@dataclass(frozen=True)
class Operation:
    """One kind of request: its method, its path for the i-th request of a round (`path(who, round, i)`),
    its body, the requests in a round at --seconds 5, and what a right answer is."""

    name: str
    method: str
    path: Callable[[str, int, int], str]
    per_round: int
    body: bytes = b""
    status: int = 200
    check: Callable[[bytes], str] = lambda body: ""  # "" when the body is right, else what is wrong


@dataclass
class Cost:
    """What one operation cost one proxy over all its rounds."""

    cpu_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    @property
    def cpu_ms(self) -> float:
        """CPU of the proxy per request, in ms."""
        return self.cpu_s * 1000 / max(1, len(self.latencies_s))

    def latency_ms(self, p: float) -> float:
        return percentile(self.latencies_s, p) * 1000

    def raw(self) -> dict[str, float | int | list[str]]:
        return {"requests": len(self.latencies_s), "cpu_ms": round(self.cpu_ms, 3),
                **{f"p{p}_ms": round(self.latency_ms(p), 3) for p in (50, 90, 99)}, "wrong": self.wrong[:5]}


def one_round(port: int, pid: int, operation: Operation, who: str, number: int, count: int, cost: Cost) -> None:
    """`count` requests of `operation` on one kept-alive connection, added to `cost`. The round's CPU
    runs until the proxy is quiet again: what the requests left it to do (a miss's write-back
    ending, a delete's background work) is theirs too."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    before = cpu_seconds(pid)
    try:
        for i in range(count):
            path = operation.path(who, number, i)
            started = time.perf_counter()
            connection.request(operation.method, path, body=operation.body or None)
            answer = connection.getresponse()
            body = answer.read()
            cost.latencies_s.append(time.perf_counter() - started)
            why = f"status {answer.status}" if answer.status != operation.status else operation.check(body)
            if why:
                cost.wrong.append(f"{operation.method} {path}: {why}")
    finally:
        connection.close()
        settle([pid], within=10.0, window=0.5)
        cost.cpu_s += cpu_seconds(pid) - before


def side_by_side(proxies: dict[str, tuple[int, int]], operation: Operation, scale: float) -> dict[str, Cost]:
    """The cost of `operation` for each proxy (name -> (port, pid)), in ROUNDS alternating rounds,
    after a short warm-up of each (connections, clients, caches: not counted)."""
    count = max(2, round(operation.per_round * scale))
    for name, (port, pid) in proxies.items():
        one_round(port, pid, operation, name, -1, min(3, count), Cost())
    costs = {name: Cost() for name in proxies}
    order = list(proxies)
    for number in range(ROUNDS):
        for name in order if number % 2 == 0 else reversed(order):
            port, pid = proxies[name]
            one_round(port, pid, operation, name, number, count, costs[name])
    return costs


def settle(pids: list[int], within: float = 120.0, below: float = 0.05, window: float = 1.0) -> float:
    """Until every process in `pids` used less than `below` of a core over `window` seconds (done
    starting, or done with what a round left), at most `within` seconds; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        before = {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(window)
        if all(cpu_seconds(pid) - before[pid] < below * window for pid in pids):
            break
    return time.monotonic() - started


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def spread(values: list[float]) -> float:
    """Largest ÷ smallest (1.00: flat)."""
    return max(values) / min(values) if values and min(values) > 0 else float("nan")

