"""Options declared once per subsystem, as fields of its settings dataclass (as s3transfer's
TransferConfig): each field made by `seconds`, `size`, `count`, `flag`, `choice`, `text`,
`optional_text`, `texts` or `optional_port` names its option, its help and how its value reads,
so the option's declaration (`declare`), its validation and the settings themselves
(`read_settings`), and the options reference in the docs all come from it. Seconds and sizes
are given as text (mitmproxy's --set parses no floats)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional, TypeVar

from mitmproxy import exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.utils import human

T = TypeVar("T")
OPTION = "backorigin_option"  # the key of a settings field's Option in its metadata


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    typespec: Any  # as mitmproxy types options (a type, Optional[...] or Sequence[str])
    default: Any  # as mitmproxy holds it (seconds and sizes as text)
    read: Callable[[Any], Any]  # the option's value -> the field's, OptionsError naming the option when it is bad
    choices: tuple[str, ...] | None = None  # shown by mitmproxy (help, console), checked by `read`


def seconds(name: str, default: float, help: str, zero_is_off: bool = False) -> Any:
    return field(default=default, metadata={OPTION: Option(
        name, help, str, f"{default:g}", lambda text: parse_seconds(name, text, zero_is_off))})


def size(name: str, default: str, help: str) -> Any:
    return field(default=parse_size(name, default), metadata={OPTION: Option(
        name, help, str, default, lambda text: parse_size(name, text))})


def count(name: str, default: int, help: str, least: int = 1, zero_means: str = "", most: int | None = None) -> Any:
    def read(value: int) -> int:
        if most is not None and not least <= value <= most:
            raise exceptions.OptionsError(f"{name}: {value} is outside {least}..{most}")
        if value < least:
            raise exceptions.OptionsError(f"{name}: must be 0 ({zero_means}) or more" if zero_means else
                                          f"{name}: must be at least {least}")
        return value
    return field(default=default, metadata={OPTION: Option(name, help, int, default, read)})


def flag(name: str, default: bool, help: str) -> Any:
    return field(default=default, metadata={OPTION: Option(name, help, bool, default, bool)})


def choice(name: str, default: str, choices: tuple[str, ...], help: str) -> Any:
    return field(default=default, metadata={OPTION: Option(
        name, help, str, default, lambda value: check_choice(name, value, choices), choices)})


def text(name: str, default: str, help: str, read: Callable[[str], Any] = str) -> Any:
    """Text; with `read`, what the field holds is made from it (`read` raises OptionsError naming the option)."""
    return field(default=read(default), metadata={OPTION: Option(name, help, str, default, read)})


def optional_text(name: str, help: str) -> Any:
    """Text, or None (the default) when not given."""
    return field(default=None, metadata={OPTION: Option(name, help, Optional[str], None, lambda value: value)})


def texts(name: str, help: str) -> Any:
    """A list of texts (repeatable with --set), none by default; the field holds a tuple."""
    return field(default=(), metadata={OPTION: Option(name, help, Sequence[str], [], tuple)})


def optional_port(name: str, help: str) -> Any:
    """A TCP port, or None (the default): off."""
    def read(port: int | None) -> int | None:
        if port is not None and not 0 <= port <= 65535:
            raise exceptions.OptionsError(f"{name}: {port} is not a port (0..65535)")
        return port
    return field(default=None, metadata={OPTION: Option(name, help, Optional[int], None, read)})


def _options(settings: type) -> Iterable[tuple[str, Option]]:
    for f in fields(settings):
        if OPTION in f.metadata:
            yield f.name, f.metadata[OPTION]


def declare(settings: type, loader: Loader) -> None:
    """The options of `settings`' fields, as mitmproxy options (a child that reads some of them
    declares them all: mitmproxy takes a declaration made again with the same signature)."""
    for _, option in _options(settings):
        loader.add_option(option.name, option.typespec, option.default, option.help, option.choices)


def option_names(settings: type) -> frozenset[str]:
    return frozenset(option.name for _, option in _options(settings))


def read_settings(settings: type[T], options: Any, **others: Any) -> T:
    """`settings` from mitmproxy's `options`, each value checked (OptionsError naming the
    option), with `others` for the fields that are no options."""
    return settings(**{name: option.read(getattr(options, option.name)) for name, option in _options(settings)}, **others)


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
    """Bytes given as text, read by mitmproxy's own parser (as its stream_large_bodies): "65536",
    "512k", "64m", "1g" (binary multiples; the unit in either case)."""
    try:
        found = human.parse_size(text.strip().lower())
    except ValueError:
        found = None
    if found is None or found < 0:
        raise exceptions.OptionsError(f"{option}: {text!r} is not a size (like 512k, 64m, 1g)")
    return found


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
