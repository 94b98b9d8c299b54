"""miss.guard's pure cores on a clock of the test's own: origin 404s remembered, fetch slots per
origin host, and the circuit breaker's states."""

from __future__ import annotations

import asyncio
import time

import pytest

from backorigin.miss.guard import Breaker, Circuit, Full, GuardSettings, NotFound, OriginGuard, Slots, origin_host
from backorigin.rules.targets import OriginRequest


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def asking(url: str = "http://o/k", headers: tuple[tuple[str, str], ...] = ()) -> OriginRequest:
    return OriginRequest(url=url, headers=headers)


def test_an_origin_404_is_remembered_for_what_the_origin_was_asked_for_its_ttl():
    clock = Clock()
    seen = NotFound(60, size=3, now=clock)
    seen.add("b", "k", asking())
    assert seen.holds("b", "k", asking()) and not seen.holds("c", "k", asking())
    # another query or another passed header is another request: not answered with this 404
    assert not seen.holds("b", "k", asking("http://o/k?bad=1")) and not seen.holds("b", "k", asking(headers=(("user-agent", "x"),)))
    clock.t += 59
    assert seen.holds("b", "k", asking())
    clock.t += 2
    assert not seen.holds("b", "k", asking()) and len(seen) == 0


def test_a_write_forgets_every_404_of_the_key_and_the_entries_are_bounded():
    seen = NotFound(60, size=3, now=Clock())
    for key, url in (("k", "http://o/k"), ("k", "http://o/k?v=2"), ("other", "http://o/other")):
        seen.add("b", key, asking(url))
    seen.forget("b", "k")
    assert len(seen) == 1 and seen.holds("b", "other", asking("http://o/other"))
    for i in range(10):
        seen.add("b", f"k{i}", asking(f"http://o/k{i}"))
    assert len(seen) == 3 and len(seen._by_key) == 3  # the index lets go of what the cache let go


def test_forgetting_a_key_costs_the_same_whatever_is_remembered():
    seen = NotFound(60, size=50_000, now=Clock())
    for i in range(30_000):
        seen.add("b", f"k{i}", asking(f"http://o/k{i}"))
    started = time.perf_counter()
    for i in range(1000):
        seen.forget("b", f"absent{i}")
    assert time.perf_counter() - started < 0.05  # it scanned every entry for each key before: 30,000,000 steps


def test_a_ttl_of_zero_remembers_nothing():
    seen = NotFound(0)
    seen.add("b", "k", asking())
    assert not seen.holds("b", "k", asking()) and len(seen) == 0


async def test_slots_let_the_limit_run_queue_the_next_and_refuse_past_the_queue():
    slots = Slots(limit=2, queue=1)
    order: list[str] = []
    release = asyncio.Event()

    async def fetch(name: str) -> None:
        async with slots.slot(("b", False)):
            order.append(name)
            await release.wait()

    running = [asyncio.ensure_future(fetch(n)) for n in ("a", "b", "c")]
    await asyncio.sleep(0)
    assert (slots.running, slots.waiting, order) == (2, 1, ["a", "b"])
    with pytest.raises(Full):
        async with slots.slot(("b", False)):
            pass
    release.set()
    await asyncio.gather(*running)
    assert order == ["a", "b", "c"] and (slots.running, slots.waiting) == (0, 0)


async def test_a_tenant_gets_the_next_free_slot_and_its_share_of_a_full_queue():
    """Public-bucket clients hold every slot and the whole queue: a private bucket's miss still
    waits (one public waiter makes room, refused), and gets the next slot that frees."""
    slots = Slots(limit=2, queue=4)
    public, private = ("pub", False), ("priv", True)
    order: list[str] = []
    gates = {name: asyncio.Event() for name in ("p0", "p1", "p2", "p3", "p4", "p5", "s")}

    async def fetch(name: str, tenant) -> str:
        try:
            async with slots.slot(tenant):
                order.append(name)
                await gates[name].wait()
        except Full:
            return f"{name} refused"
        return name

    tasks = [asyncio.ensure_future(fetch(f"p{i}", public)) for i in range(6)]
    await asyncio.sleep(0)
    assert (slots.running, slots.waiting) == (2, 4)
    mine = asyncio.ensure_future(fetch("s", private))
    await asyncio.sleep(0)
    assert slots.waiting_for(private) == 1 and slots.waiting_for(public) == 3
    assert await tasks[5] == "p5 refused"  # the newest public waiter gave its place up
    gates["p0"].set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert order == ["p0", "p1", "s"]  # the private miss first, although public ones waited longer
    for gate in gates.values():
        gate.set()
    assert await mine == "s" and [await t for t in tasks[:5]] == ["p0", "p1", "p2", "p3", "p4"]
    assert (slots.running, slots.waiting) == (0, 0)


async def test_a_waiter_that_is_cancelled_leaves_the_queue():
    slots = Slots(limit=1, queue=2)
    held = asyncio.Event()

    async def hold() -> None:
        async with slots.slot(("b", False)):
            await held.wait()

    first = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    second = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert slots.waiting == 0
    held.set()
    await first
    assert slots.running == 0


def breaker(clock: Clock) -> Breaker:
    return Breaker("origin:80", failures=3, window=30, cooldown=10, now=clock)


def test_failures_in_a_row_open_the_circuit_then_one_fetch_tests_it_after_the_cooldown():
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(2):
        assert circuit.allow()
        circuit.record(failed=True)
    assert circuit.state is Circuit.CLOSED
    circuit.record(failed=True)
    assert circuit.state is Circuit.OPEN and not circuit.allow()
    clock.t += 9.9
    assert not circuit.allow()
    clock.t += 0.2
    assert circuit.allow() and circuit.state is Circuit.HALF_OPEN
    assert not circuit.allow()  # one test at a time
    circuit.record(failed=False)
    assert circuit.state is Circuit.CLOSED and circuit.allow()


def under_test(clock: Clock) -> Breaker:
    """A circuit opened by three failures, its cool-down over, its one test fetch let through."""
    circuit = breaker(clock)
    for _ in range(3):
        circuit.record(failed=True)
    clock.t += 11
    assert circuit.allow()
    return circuit


def test_a_failed_test_opens_the_circuit_again_for_another_cooldown():
    clock = Clock()
    circuit = under_test(clock)
    circuit.record(failed=True)
    assert circuit.state is Circuit.OPEN and not circuit.allow()
    clock.t += 11
    assert circuit.allow()


def test_a_test_that_records_nothing_counts_as_failed():
    circuit = under_test(Clock())
    circuit.release()  # the fetch raised or was cancelled
    assert circuit.state is Circuit.OPEN
    circuit.release()  # nothing under test: nothing happens
    assert circuit.state is Circuit.OPEN


def test_a_success_or_a_quiet_window_starts_the_count_again():
    clock = Clock()
    circuit = breaker(clock)
    for failed in (True, True, False, True, True):
        circuit.record(failed)
    assert circuit.state is Circuit.CLOSED
    clock.t += 31
    circuit.record(failed=True)  # the earlier two are older than the window
    assert circuit.state is Circuit.CLOSED
    circuit.record(failed=True)
    circuit.record(failed=True)
    assert circuit.state is Circuit.OPEN


def test_zero_failures_never_opens():
    circuit = Breaker("o", failures=0, window=30, cooldown=10)
    for _ in range(100):
        circuit.record(failed=True)
    assert circuit.state is Circuit.CLOSED


def test_the_guard_keeps_limits_per_origin_host_circuits_per_host_and_tenant_and_starts_afresh_when_configured():
    guard = OriginGuard(GuardSettings(concurrency=3, queue=4, failures=2))
    tenant = ("b", False)
    a, b = guard.breaker_for("http://A.example:8080/x/y", tenant), guard.breaker_for("https://b.example/z", tenant)
    assert a is guard.breaker_for("http://a.example:8080/other", tenant) and a is not b
    assert guard.breaker_for("http://a.example:8080/", ("b", True)) is not a  # the bucket's signed clients
    assert guard.breaker_for("http://a.example:8080/", ("other", False)) is not a
    assert guard.slots_for("http://a.example:8080/q").limit == 3
    assert origin_host("HTTP://Host.Example:81/p?q") == "host.example:81"
    guard.configure(GuardSettings(concurrency=5))
    assert guard.breaker_for("http://a.example:8080/", tenant) is not a and guard.slots_for("http://a.example:8080/").limit == 5


def test_hosts_and_circuits_as_new_are_forgotten_past_the_bound_and_no_other(monkeypatch):
    """A "*" entry with ${bucket} in its host: every bucket a client names has a host and a
    circuit; past KEPT, those as new go (and their metrics' labels), an open circuit, a failure that
    still counts and a host with a fetch under way stay."""
    monkeypatch.setattr("backorigin.miss.guard.KEPT", 10)
    clock = Clock()
    guard = OriginGuard(GuardSettings(failures=2), now=clock)
    opened = guard.breaker_for("http://down.old/", ("down", True))
    opened.record(failed=True)
    opened.record(failed=True)
    failing = guard.breaker_for("http://flaky.old/", ("flaky", True))
    failing.record(failed=True)
    busy = guard.slots_for("http://busy.old/")
    busy.running = 1
    for n in range(1000):
        guard.breaker_for(f"http://b{n}.old/", (f"b{n}", True))
        guard.slots_for(f"http://b{n}.old/")
    assert len(guard.breakers) <= 11 and len(guard.slots) <= 11
    assert opened.state is Circuit.OPEN and guard.breaker_for("http://down.old/", ("down", True)) is opened
    assert guard.breaker_for("http://flaky.old/", ("flaky", True)) is failing and guard.slots_for("http://busy.old/") is busy
    clock.t += 31  # its failure no longer counts: as new, it may go
    for n in range(30):
        guard.breaker_for(f"http://c{n}.old/", (f"c{n}", True))
    assert ("flaky.old", ("flaky", True)) not in guard.breakers and ("down.old", ("down", True)) in guard.breakers


def test_one_key_keeps_a_bounded_number_of_variants():
    seen = NotFound(60, now=Clock())
    for i in range(1000):
        seen.add("b", "k", asking(f"http://o/k?v={i}"))
    assert len(seen) == 64 and seen.holds("b", "k", asking("http://o/k?v=0")) and not seen.holds("b", "k", asking("http://o/k?v=999"))
    seen.forget("b", "k")
    assert len(seen) == 0
