"""miss.guard's pure cores on a clock of the test's own: origin 404s remembered, fetch slots per
origin host, and the circuit breaker's states."""

from __future__ import annotations

import asyncio

import pytest

from backorigin.miss.guard import Breaker, Circuit, Full, GuardSettings, NotFound, OriginGuard, Slots, origin_host


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_an_origin_404_is_remembered_per_rule_and_key_for_its_ttl():
    clock = Clock()
    seen = NotFound(60, size=3, now=clock)
    seen.add("b", 1, "k")
    assert ("b", 1, "k") in seen and ("b", 2, "k") not in seen and ("c", 1, "k") not in seen
    clock.t += 59
    assert ("b", 1, "k") in seen
    clock.t += 2
    assert ("b", 1, "k") not in seen


def test_a_write_forgets_the_key_for_every_rule_and_the_entries_are_bounded():
    seen = NotFound(60, size=3, now=Clock())
    for entry in (("b", 1, "k"), ("b", 2, "k"), ("b", 1, "other")):
        seen.add(*entry)
    seen.forget("b", "k")
    assert len(seen) == 1 and ("b", 1, "other") in seen
    for i in range(10):
        seen.add("b", 1, f"k{i}")
    assert len(seen) == 3


def test_a_ttl_of_zero_remembers_nothing():
    seen = NotFound(0)
    seen.add("b", 1, "k")
    assert ("b", 1, "k") not in seen and len(seen) == 0


async def test_slots_let_the_limit_run_queue_the_next_and_refuse_past_the_queue():
    slots = Slots(limit=2, queue=1)
    order: list[str] = []
    release = asyncio.Event()

    async def fetch(name: str) -> None:
        async with slots:
            order.append(name)
            await release.wait()

    running = [asyncio.ensure_future(fetch(n)) for n in ("a", "b", "c")]
    await asyncio.sleep(0)
    assert (slots.running, slots.waiting, order) == (2, 1, ["a", "b"])
    with pytest.raises(Full):
        async with slots:
            pass
    release.set()
    await asyncio.gather(*running)
    assert order == ["a", "b", "c"] and (slots.running, slots.waiting) == (0, 0)


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


def test_the_guard_keeps_limits_and_circuits_per_origin_host_and_starts_afresh_when_configured():
    guard = OriginGuard(GuardSettings(concurrency=3, queue=4, failures=2))
    a, b = guard.breaker_for("http://A.example:8080/x/y"), guard.breaker_for("https://b.example/z")
    assert a is guard.breaker_for("http://a.example:8080/other") and a is not b
    assert guard.slots_for("http://a.example:8080/q").limit == 3
    assert origin_host("HTTP://Host.Example:81/p?q") == "host.example:81"
    guard.configure(GuardSettings(concurrency=5))
    assert guard.breaker_for("http://a.example:8080/") is not a and guard.slots_for("http://a.example:8080/").limit == 5
