"""The options reference (docs/options.md), made from the options' own declarations.

The addons mitmproxy loads (scripts/mitmproxy_addon.py's `addons`, children included, as
mitmproxy traverses them) declare their options into a mitmproxy OptManager through
mitmproxy's own Loader, exactly as at start-up; the page lists what that OptManager then holds:
every `backorigin_*` option with its type, default, choices and help text. Every option is a
field of a subsystem's settings dataclass (backorigin.options), declared from it in `load()`:
BackOriginSettings (how a GET/HEAD is decided), RulesSettings, StoreSettings, MirrorSettings,
Timeouts, WriteBackSettings, GuardSettings, LeaseSettings, DeleteSettings, WriteThroughSettings,
ListingSettings, MetricsSettings and LedgerSettings; the page follows what mitmproxy sees.

    python -m backorigin.tools.options_reference docs/options.md   # what `make docs` runs

tests/unit/test_options_reference.py fails when the page in docs/ is not what this makes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mitmproxy import addonmanager, optmanager
from mitmproxy.utils import typecheck

HEADER = """\
# Options reference

<!-- Made by `python -m backorigin.tools.options_reference docs/options.md` (`make docs`) from the
options' own declarations; tests/unit/test_options_reference.py checks that it is current. -->

Every option backorigin adds to mitmproxy, as mitmproxy holds it: set one with
`--set NAME=VALUE` on `backorigin run` or `backorigin demo` (or on `mitmdump`/`mitmweb`
with `-s`), in mitmproxy's `config.yaml`, or at run time in mitmproxy's and mitmweb's options
editor. Options that take seconds or sizes are text, since `--set` parses no floats: `"0.5"`,
`512k`, `64m`, `1g`. A bad value stops the proxy at start-up with a message naming the
option (at run time the change is refused and the old value stays).

`backorigin run` also sets some of mitmproxy's own options: `keep_host_header=true` in
reverse mode (see [Proxy modes](modes.md)), `web_columns` with `--ui web`, and, when you
have not set it, `stream_large_bodies=1m` (see [Security](security.md)).

| option | type | default | what it does |
| --- | --- | --- | --- |
"""


def declared_options(addons: Iterable[Any]) -> optmanager.OptManager:
    """An OptManager holding the options `addons` (and their children) declare in `load`."""
    options = optmanager.OptManager()
    loader = addonmanager.Loader(SimpleNamespace(options=options))
    for addon in addonmanager.traverse(list(addons)):
        if hasattr(addon, "load"):
            addon.load(loader)
    return options


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{item}`" for item in value)
    return f"`{value}`" if value != "" else '`""`'


def reference(options: optmanager.OptManager) -> str:
    rows = []
    for name in sorted(options.keys()):
        option = options._options[name]
        help_text = option.help.strip()
        if option.choices:
            help_text += " One of: " + ", ".join(f"`{choice}`" for choice in option.choices) + "."
        rows.append(f"| `{name}` | {typecheck.typespec_to_str(option.typespec)} | {_default(option.default)} | {_cell(help_text)} |")
    return HEADER + "\n".join(rows) + "\n"


def page() -> str:
    from backorigin.scripts.mitmproxy_addon import addons

    return reference(declared_options(addons))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m backorigin.tools.options_reference FILE.md", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(page(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
