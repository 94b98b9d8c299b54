"""What one kind of request costs a proxy, measured side by side: the proxies of an axis are asked
in lockstep, request i of a round going to each proxy in turn (the order reversed at every other
i), each proxy on its own kept-alive connection, so that drift and other load on the machine fall
on all alike; the proxy's own CPU time for each round is read from /proc (utime + stime of the
mitmdump process, its threads included; the write-back worker is a process of its own and is left
out), and every request's latency is kept."""

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


def ask(connection: http.client.HTTPConnection, operation: Operation, path: str, cost: Cost) -> None:
    """One request of `operation`, its latency and whether its answer was right added to `cost`."""
    started = time.perf_counter()
    connection.request(operation.method, path, body=operation.body or None)
    answer = connection.getresponse()
    body = answer.read()
    cost.latencies_s.append(time.perf_counter() - started)
    why = f"status {answer.status}" if answer.status != operation.status else operation.check(body)
    if why:
        cost.wrong.append(f"{operation.method} {path}: {why}")


def one_round(proxies: dict[str, tuple[int, int]], operation: Operation, number: int, count: int,
              costs: dict[str, Cost]) -> None:
    """`count` requests of `operation` to every proxy (name -> (port, pid)) in lockstep, added to
    `costs`. Each proxy's CPU for the round runs until all are quiet again: what the requests left
    them to do (a miss's write-back ending, a delete's background work) is theirs too."""
    names = list(proxies)
    connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=120) for name, (port, _) in proxies.items()}
    before = {name: cpu_seconds(pid) for name, (_, pid) in proxies.items()}
    try:
        for i in range(count):
            for name in names if i % 2 == 0 else reversed(names):
                ask(connections[name], operation, operation.path(name, number, i), costs[name])
    finally:
        for connection in connections.values():
            connection.close()
        settle([pid for _, pid in proxies.values()], within=10.0, window=0.5)
        for name, (_, pid) in proxies.items():
            costs[name].cpu_s += cpu_seconds(pid) - before[name]


def side_by_side(proxies: dict[str, tuple[int, int]], operation: Operation, scale: float) -> dict[str, Cost]:
    """The cost of `operation` for each proxy (name -> (port, pid)), over ROUNDS rounds in lockstep,
    after a short warm-up of each (connections, clients, caches: not counted)."""
    count = max(2, round(operation.per_round * scale))
    one_round(proxies, operation, -1, min(3, count), {name: Cost() for name in proxies})
    costs = {name: Cost() for name in proxies}
    for number in range(ROUNDS):
        one_round(proxies, operation, number, count, costs)
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

