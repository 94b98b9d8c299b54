"""The sweep's pacing: a token bucket with no burst, and rates given as text."""

from __future__ import annotations

import pytest

from backorigin.tools.backfill import Pacer, parse_rate


def test_pacer_and_rate_text():
    now = [0.0]
    pacer = Pacer(10, clock=lambda: now[0])
    assert [pacer.reserve(1) for _ in range(3)] == [0.0, pytest.approx(0.1), pytest.approx(0.2)]
    now[0] = 5.0  # an idle stretch earns no burst
    assert pacer.reserve(1) == 0.0 and pacer.reserve(1) == pytest.approx(0.1)
    assert parse_rate("50m") == 50 * 1024 * 1024 and parse_rate("512k/s") == 512 * 1024
    with pytest.raises(ValueError):
        parse_rate("fast")
