"""Option values given as text (mitmproxy's --set parses no floats) and read as numbers."""

from __future__ import annotations

import re

from mitmproxy import exceptions

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_seconds(option: str, text: str, zero_is_off: bool = False) -> float:
    """Seconds given as text ("10", "0.5"): mitmproxy's --set cannot parse floats. With
    `zero_is_off`, 0 is allowed too (it turns the feature off)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if zero_is_off and seconds == 0:
        return 0.0
    if not 0 < seconds < float("inf"):
        raise exceptions.OptionsError(
            f"{option}: {text!r} is not a positive number of seconds{' (or 0: off)' if zero_is_off else ''}")
    return seconds


def parse_size(option: str, text: str) -> int:
    """Bytes given as text: "65536", "512k", "64m", "1g" (binary multiples)."""
    match = _SIZE.match(text)
    if not match:
        raise exceptions.OptionsError(f"{option}: {text!r} is not a size (like 512k, 64m, 1g)")
    return int(match.group(1)) * 1024 ** " kmgt".index((match.group(2) or " ").lower())


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    """mitmproxy shows an option's `choices` in its help and console, but does not enforce them."""
    if value not in choices:
        raise exceptions.OptionsError(f"{option}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return value
