"""The origin fetch: when a secondary origin takes over."""

from __future__ import annotations

import pytest

from backorigin.miss.origin import OriginResult, should_switch


@pytest.mark.parametrize(
    "status, all_errors, switch",
    [(None, False, True), (500, False, True), (503, False, True), (403, False, False), (404, False, False),
     (200, False, False), (None, True, True), (403, True, True), (500, True, True), (404, True, False),
     (302, True, False), (206, True, False)],
)
def test_should_switch_to_the_secondary(status, all_errors, switch):
    assert should_switch(OriginResult("u", status), all_errors) is switch
