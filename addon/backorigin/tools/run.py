"""`backorigin run`: the mitmdump or mitmweb command line with the addon loaded, in one of four
proxy modes, checked before mitmproxy starts; then mitmproxy takes over the process.

- reverse (the default): clients use the proxy as their endpoint; `--store` is the store behind
  it. `keep_host_header=true` unless the user sets it: SigV4 covers Host, so every signed client
  needs it, and the addon reads the client's Host for redirects, vhost buckets and header rules.
- regular and upstream:URL: clients send their requests for the store through the proxy
  (HTTP_PROXY/HTTPS_PROXY); their URLs name the store, and `--store` (repeatable, at least one)
  names the stores the proxy acts for (backorigin_stores): a request to any other host is
  forwarded untouched, and nothing the proxy sends itself goes to a host only a client named.
- transparent: as regular, but the operating system sends the clients' connections to the proxy;
  `run` sets up no redirection (that takes root and the OS's NAT rules; see the README).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from backorigin.rules.model import MAX_RULES_CEILING
from backorigin.rules.parsing import load_rules

ADDON_SCRIPT = Path(__file__).parent.parent / "scripts" / "mitmproxy_addon.py"  # what mitmdump/mitmweb load with -s
# mitmweb's flow list, with the comment column, where each flow says what backorigin decided
WEB_COLUMNS = ("tls", "icon", "method", "path", "status", "size", "time", "comment")  # the marker sits at the path's end
MODES = ("reverse", "regular", "transparent", "upstream")
# what `run` sets from its own arguments: given again with --set or after --, mitmproxy would
# take two values or silently one of them
_OWN_OPTIONS = {"mode": "--mode", "listen_host": "--listen", "listen_port": "--listen"}
_OWN_FLAGS = {"-m": "--mode", "--mode": "--mode", "--listen-host": "--listen", "-p": "--listen", "--listen-port": "--listen"}


class RunError(ValueError):
    """A `backorigin run` command line that cannot work: reported before mitmproxy starts, exit status 2."""


def mitmproxy_command(ui: str, stores: list[str], rules: Path, listen: str, options: Sequence[str],
                      extra: Sequence[str] = (), mode: str = "reverse") -> list[str]:
    """The mitmdump/mitmweb command line `backorigin run` starts (RunError when it cannot work)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise RunError(f"--listen {listen!r} is not HOST:PORT")
    extra = [arg for arg in extra if arg != "--"]
    given = _option_names([*options, *_sets_in(extra)])
    for name, instead in _OWN_OPTIONS.items():
        if name in given:
            raise RunError(f"--set {name}=... : give it with {instead}")
    for arg in extra:
        if (flag := arg.split("=", 1)[0]) in _OWN_FLAGS:
            raise RunError(f"{flag} after --: give it with {_OWN_FLAGS[flag]}")
    spec, implied = mode_spec(mode, stores, given)
    program = "mitmweb" if ui == "web" else "mitmdump"
    installed = Path(sys.executable).with_name(program)
    # web_columns is a list option: each --set adds one column (a comma would make one unknown name)
    columns = [f"web_columns={column}" for column in WEB_COLUMNS] if ui == "web" else []
    sets = [f"backorigin_rules={rules}", *columns, *implied, *options]
    return [
        str(installed) if installed.exists() else (shutil.which(program) or program),
        "-s", str(ADDON_SCRIPT), "--mode", spec, "--listen-host", host.strip("[]"), "--listen-port", port,
        *(arg for option in sets for arg in ("--set", option)),
        *extra,
    ]


def mode_spec(mode: str, stores: list[str], given: set[str]) -> tuple[str, list[str]]:
    """mitmproxy's --mode for `--mode MODE --store URL...`, and the options it implies."""
    kind, _, data = mode.partition(":")
    if kind not in MODES:
        raise RunError(f"--mode {mode!r}: expected one of reverse, regular, transparent, upstream:URL")
    stores = [checked_url(store, "--store") for store in stores]
    if kind == "reverse":
        if data:
            raise RunError(f"--mode {mode!r}: name the store with --store URL and leave --mode reverse bare")
        if len(stores) != 1:
            raise RunError("--mode reverse (the default) needs --store URL, once: the store clients reach through the proxy")
        # SigV4 covers Host: without it every signed client would get SignatureDoesNotMatch
        return f"reverse:{stores[0]}", [] if "keep_host_header" in given else ["keep_host_header=true"]
    if kind == "upstream":
        if not data:
            raise RunError("--mode upstream:URL needs the proxy to go through, e.g. upstream:http://proxy.internal:3128")
        spec = f"upstream:{checked_url(data, '--mode upstream:URL')}"
    elif data:
        raise RunError(f"--mode {mode!r}: {kind} mode takes no URL")
    else:
        spec = kind
    if not stores and "backorigin_stores" not in given:
        raise RunError(f"--mode {kind} needs --store URL (repeatable): the stores the proxy acts for; "
                       "a request to any other host is forwarded untouched")
    return spec, [f"backorigin_stores={store}" for store in stores]


def checked_url(url: str, what: str) -> str:
    """scheme://host[:port], from http(s)://host[:port][/]."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise RunError(f"{what} {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RunError(f"{what} {url!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise RunError(f"{what} {url!r}: only scheme, host and port (no path, query or credentials)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _sets_in(extra: Sequence[str]) -> list[str]:
    """The NAME=VALUE of each `--set NAME=VALUE` (or `--set=NAME=VALUE`) among mitmproxy's own arguments."""
    found = []
    for arg, following in itertools.pairwise([*extra, ""]):
        if arg == "--set":
            found.append(following)
        elif arg.startswith("--set="):
            found.append(arg.removeprefix("--set="))
    return found


def _option_names(options: Sequence[str]) -> set[str]:
    for option in options:
        if "=" not in option:
            raise RunError(f"--set {option!r} is not NAME=VALUE")
    return {option.split("=", 1)[0] for option in options}


def notes(mode: str, options: Sequence[str], listen: str) -> list[str]:
    """What the user must do that `run` does not: the proxy variables, the CA HTTPS clients
    trust, the operating system's redirection."""
    if mode == "reverse":
        return []
    confdir = next((o.split("=", 1)[1] for o in reversed(options) if o.startswith("confdir=")), "~/.mitmproxy")
    trust = f"HTTPS clients trust {confdir}/mitmproxy-ca-cert.pem (AWS_CA_BUNDLE)"
    if mode == "transparent":
        return [f"{trust}; the clients' connections reach {listen} only once the operating system redirects them "
                "(as root: an iptables or nft REDIRECT rule; see the README's \"Transparent mode\")"]
    return [f"clients set HTTPS_PROXY (and HTTP_PROXY) to http://{listen}; {trust}"]


def run_proxy(args: argparse.Namespace) -> int:
    command = mitmproxy_command(args.ui, args.store, args.rules, args.listen, args.options, args.extra, args.mode)
    load_rules(args.rules, MAX_RULES_CEILING)  # a bad file is reported here, before mitmproxy starts
    print(" ".join(command), file=sys.stderr)
    for line in notes(args.mode.partition(":")[0], args.options, args.listen):
        print(f"backorigin run: {line}", file=sys.stderr)
    os.execv(command[0], command)  # mitmproxy takes over the terminal, signals and exit status
