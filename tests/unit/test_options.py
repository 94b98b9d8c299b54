"""Option values given as text: sizes and seconds, and choices; settings dataclasses made of
option fields, declared as mitmproxy options and read back from them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from mitmproxy import addonmanager, exceptions
from mitmproxy.test import taddons

from backorigin.options import (
    check_choice,
    choice,
    count,
    declare,
    flag,
    option_names,
    optional_port,
    optional_text,
    parse_seconds,
    parse_size,
    read_settings,
    seconds,
    size,
    text,
    texts,
)


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


def _number(option, value):
    if not value.isdigit():
        raise exceptions.OptionsError(f"{option}: {value!r} is not a number")
    return int(value)


@dataclass(frozen=True)
class Example:
    """One field of each kind the options module makes, as a subsystem's settings would have."""

    mode: str = choice("ex_mode", "fast", ("fast", "safe"), "How.")
    name: str = text("ex_name", "rules.json", "A name.")
    place: int = text("ex_place", "7", "Text read as a number.", read=lambda value: _number("ex_place", value))
    path: str | None = optional_text("ex_path", "A path, or none.")
    hosts: tuple[str, ...] = texts("ex_hosts", "Hosts.")
    port: int | None = optional_port("ex_port", "A port, or off.")
    rules: int = count("ex_rules", 5, "Most rules.", most=100)
    wait: float = seconds("ex_wait", 30.0, "Seconds.", zero_is_off=True)
    limit: int = size("ex_limit", "64m", "Bytes.")
    on: bool = flag("ex_on", False, "A switch.")


def test_settings_are_declared_as_mitmproxy_options_with_their_types_defaults_and_choices():
    with taddons.context() as tctx:
        declare(Example, addonmanager.Loader(tctx.master))
        declare(Example, addonmanager.Loader(tctx.master))  # a second child declaring the same settings is taken
        held = tctx.options._options
        assert {name: (held[name].typespec, held[name].default) for name in option_names(Example)} == {
            "ex_mode": (str, "fast"), "ex_name": (str, "rules.json"), "ex_place": (str, "7"),
            "ex_path": (str | None, None), "ex_hosts": (Sequence[str], []), "ex_port": (int | None, None),
            "ex_rules": (int, 5), "ex_wait": (str, "30"), "ex_limit": (str, "64m"), "ex_on": (bool, False)}
        assert held["ex_mode"].choices == ("fast", "safe") and held["ex_hosts"].choices is None
        assert read_settings(Example, tctx.options) == Example()  # the defaults, read, are the dataclass's own
        assert Example().place == 7 and Example().limit == 64 * 1024**2
        tctx.options.update(ex_mode="safe", ex_name="other.json", ex_place="12", ex_path="/tmp/x", ex_hosts=["a", "b"],
                            ex_port=9090, ex_rules=100, ex_wait="0", ex_limit="1k", ex_on=True)
        assert read_settings(Example, tctx.options) == Example(
            mode="safe", name="other.json", place=12, path="/tmp/x", hosts=("a", "b"), port=9090, rules=100, wait=0.0,
            limit=1024, on=True)


@pytest.mark.parametrize("option, value, message", [
    ("ex_mode", "quick", "ex_mode: 'quick' is not one of 'fast', 'safe'"),
    ("ex_place", "seven", "ex_place: 'seven' is not a number"),
    ("ex_port", 65536, "ex_port: 65536 is not a port"),
    ("ex_port", -1, "ex_port: -1 is not a port"),
    ("ex_rules", 101, "ex_rules: 101 is outside 1..100"),
    ("ex_rules", 0, "ex_rules: 0 is outside 1..100"),
    ("ex_wait", "-1", "ex_wait: '-1' is not a positive number of seconds"),
    ("ex_limit", "lots", "ex_limit: 'lots' is not a size"),
])
def test_a_bad_value_is_refused_naming_its_option(option, value, message):
    with taddons.context() as tctx:
        declare(Example, addonmanager.Loader(tctx.master))
        tctx.options.update(**{option: value})
        with pytest.raises(exceptions.OptionsError, match=re.escape(message)):
            read_settings(Example, tctx.options)
