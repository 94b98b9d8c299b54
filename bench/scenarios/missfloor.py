"""Scenario 2's second floor (issue 28 item 6): the time of what a 1 KiB miss cannot avoid, timed
as one client sees it. For each new missing key the client asks the store through plain mitmdump
(a 404) and then the origin directly for the bytes, one after the other, each on its own kept-alive
connection, and times the pair; in alternating rounds, the same client asks mitmdump+addon for new
missing keys (mirrored) on a kept-alive connection. Today's floor adds the p50s of two separate wrk
runs; this one is the p50 of the pairs themselves, from the same client as the misses it is
compared with (a Python client: both sides pay its overhead, the pair twice)."""

from __future__ import annotations

import http.client
import statistics
import time
from dataclasses import dataclass, field

from bench.report import Report, log
from bench.stack import BUCKET, KiB, Stack

ROUNDS = 4


@dataclass
class Timings:
    seconds: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000


def _get(connection: http.client.HTTPConnection, path: str, status: int, size: int | None, timings: Timings) -> None:
    connection.request("GET", path)
    answer = connection.getresponse()
    body = answer.read()
    if answer.status != status or (size is not None and len(body) != size):
        timings.wrong.append(f"GET {path}: {answer.status}, {len(body)} bytes")


def floor_round(stack: Stack, number: int, count: int, timings: Timings) -> None:
    """`count` pairs: the store's 404 through plain mitmdump, then the origin's 1 KiB directly."""
    plain = http.client.HTTPConnection("127.0.0.1", stack.plain.port, timeout=60)
    origin = http.client.HTTPConnection("127.0.0.1", stack.origin_port, timeout=60)
    try:
        for i in range(count):
            started = time.perf_counter()
            _get(plain, f"/{BUCKET}/small/pair-floor-{number}-{i}", 404, None, timings)
            _get(origin, f"/small/pair-direct-{number}-{i}", 200, KiB, timings)
            timings.seconds.append(time.perf_counter() - started)
    finally:
        plain.close()
        origin.close()


def miss_round(stack: Stack, number: int, count: int, timings: Timings) -> None:
    """`count` new missing 1 KiB keys through mitmdump+addon, mirrored."""
    proxy = http.client.HTTPConnection("127.0.0.1", stack.addon.port, timeout=60)
    try:
        for i in range(count):
            started = time.perf_counter()
            _get(proxy, f"/{BUCKET}/small/pair-miss-{number}-{i}", 200, KiB, timings)
            timings.seconds.append(time.perf_counter() - started)
    finally:
        proxy.close()


def pair_floor_row(stack: Stack, report: Report, seconds: float) -> dict[str, object]:
    """The row beside today's floor: the 1 KiB miss p50 ÷ the p50 of the (404 via plain, origin
    direct) pairs, the two measured in alternating rounds by one client."""
    count = max(10, round(seconds * 10))
    floor, misses = Timings(), Timings()
    floor_round(stack, -1, 3, Timings())  # warm-up: connections, the store's and the origin's caches
    miss_round(stack, -1, 3, Timings())
    for number in range(ROUNDS):
        rounds = (floor_round, miss_round) if number % 2 == 0 else (miss_round, floor_round)
        for measure in rounds:
            measure(stack, number, count, floor if measure is floor_round else misses)
    ratio = misses.p50_ms / floor.p50_ms
    wrong = floor.wrong + misses.wrong
    report.add("2", "miss path", f"1 KiB mirrored GET p50 ÷ (the store's 404 via plain mitmdump, then the origin's GET "
               f"direct: one client's pair, timed whole) ({misses.p50_ms:.2f} ms ÷ {floor.p50_ms:.2f} ms)",
               f"{ratio:.2f}", "≤ 1.5", ratio <= 1.5,
               failed=f"miss floor pairs: {len(wrong)} wrong answers, e.g. {wrong[:2]}" if wrong else "")
    log(f"miss 1 KiB, one client: p50 of (404 via plain, then origin direct) {floor.p50_ms:.2f} ms, "
        f"of a mirrored miss {misses.p50_ms:.2f} ms ({len(misses.seconds)} each)")
    return {"pair_floor_p50_ms": round(floor.p50_ms, 3), "pair_mirrored_p50_ms": round(misses.p50_ms, 3),
            "pairs": len(floor.seconds), "wrong": wrong[:5]}
