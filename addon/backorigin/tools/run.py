"""`backorigin run`: the mitmdump or mitmweb command line with the addon loaded, then mitmproxy
takes over the process."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from backorigin.rules.files import load_rules
from backorigin.rules.model import MAX_RULES_CEILING

ADDON_SCRIPT = Path(__file__).parent.parent / "scripts" / "mitmproxy_addon.py"  # what mitmdump/mitmweb load with -s
# mitmweb's flow list, with the comment column, where each flow says what backorigin decided
WEB_COLUMNS = ("tls", "icon", "path", "method", "status", "size", "time", "comment")


def mitmproxy_command(ui: str, store: str, rules: Path, listen: str, options: Sequence[str],
                      extra: Sequence[str] = ()) -> list[str]:
    """The mitmdump/mitmweb command line `backorigin run` starts."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"backorigin run: --listen {listen!r} is not HOST:PORT")
    for option in options:
        if "=" not in option:
            raise SystemExit(f"backorigin run: --set {option!r} is not NAME=VALUE")
    program = "mitmweb" if ui == "web" else "mitmdump"
    installed = Path(sys.executable).with_name(program)
    # web_columns is a list option: each --set adds one column (a comma would make one unknown name)
    columns = [f"web_columns={column}" for column in WEB_COLUMNS] if ui == "web" else []
    sets = [f"backorigin_rules={rules}", *columns, *options]
    return [
        str(installed) if installed.exists() else (shutil.which(program) or program),
        "-s", str(ADDON_SCRIPT), "--mode", f"reverse:{store}", "--listen-host", host.strip("[]"), "--listen-port", port,
        *(arg for option in sets for arg in ("--set", option)),
        *[arg for arg in extra if arg != "--"],
    ]


def run_proxy(args: argparse.Namespace) -> int:
    load_rules(args.rules, MAX_RULES_CEILING)  # a bad file is reported here, before mitmproxy starts
    command = mitmproxy_command(args.ui, args.store, args.rules, args.listen, args.options, args.extra)
    print(" ".join(command), file=sys.stderr)
    os.execv(command[0], command)  # mitmproxy takes over the terminal, signals and exit status
