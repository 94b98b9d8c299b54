"""Option values given as text: sizes and seconds, and choices."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions

from backorigin.options import check_choice, parse_seconds, parse_size


@pytest.mark.parametrize(
    "text, size", [("65536", 65536), ("512k", 512 * 1024), ("64m", 64 * 1024**2), ("1G", 1024**3), (" 2g ", 2 * 1024**3)]
)
def test_sizes(text, size):
    assert parse_size("o", text) == size


@pytest.mark.parametrize("text", ["", "big", "-1k", "1.5m", "1p", "2gib"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(exceptions.OptionsError, match=f"o: {text!r} is not a size"):
        parse_size("o", text)


def test_seconds_and_choices():
    assert parse_seconds("o", "0.5") == 0.5
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(exceptions.OptionsError, match="is not a positive number of seconds"):
            parse_seconds("o", bad)
    assert check_choice("o", "a", ("a", "b")) == "a"
    with pytest.raises(exceptions.OptionsError, match="o: 'c' is not one of 'a', 'b'"):
        check_choice("o", "c", ("a", "b"))
