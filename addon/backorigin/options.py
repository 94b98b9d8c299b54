"""Option values given as text (mitmproxy's --set parses no floats) and read as numbers."""

from __future__ import annotations

import re

from mitmproxy import exceptions
from mitmproxy.addonmanager import Loader

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


class GivenOnce:
    """A child addon, BackOrigin's last (its load runs after every other child has added its
    options): refuses an option of ours given more than once (`--set A=1 --set A=2`) unless it
    is a list option.

    Why it is needed: mitmdump keeps `--set` values of a script's options until the script adds
    them, then converts them while registering the script (`OptManager.process_deferred`); two
    values for a single-valued option raise there, inside mitmproxy's script loader, which drops
    the error: the script's addon stays registered but never gets a hook, silently inactive.
    Taking those values out of the deferred ones here lets the registration finish, and the
    refusal is raised in configure, where mitmproxy reports it and stops the start."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def load(self, loader: Loader) -> None:
        options = loader.master.options
        for name, deferred in list(options.deferred.items()):
            values = getattr(deferred, "val", None)  # mitmproxy's unconverted --set strings
            if (name.startswith("backorigin_") and name in options and isinstance(values, list) and len(values) > 1
                    and not isinstance(getattr(options, name), (list, tuple))):
                del options.deferred[name]
                self.refused.append(f"{name} given {len(values)} times ({', '.join(map(repr, values))}): give it once")

    def configure(self, updated: set[str]) -> None:
        if self.refused:
            raise exceptions.OptionsError("; ".join(self.refused))
