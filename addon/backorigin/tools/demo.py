"""`backorigin demo`: the whole set-up on one machine, for a first look.

Starts an embedded SeaweedFS store, a sample origin (a folder served over HTTP: by default the
sample site shipped inside the package), creates the buckets the rules name, then runs the proxy
as `backorigin run` would. Everything it needs ships with the package, so it runs from any folder.

- Its own data: the store's data and the rules it uses live in --state (default .demo), so a
  second start finds both again.
- The sample rules follow the ports: STATE/rules.json is written from the sample at the first
  start, and at every start its MirrorURLs on loopback are pointed at --origin-port. Rules given
  with --rules are the user's: used as they are, with a warning for a loopback MirrorURL that is
  not the demo's origin.
- Ctrl-C: the proxy runs in a session of its own and gets exactly one SIGINT (a second one would
  kill it before its write-backs land); the demo exits with the proxy's status, 0 once the
  pending write-backs have landed. Under `make run`, the demo takes the terminal's foreground for
  its process group while it runs, so that Ctrl-C reaches the demo only and make sees exit 0.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from backorigin.rules.model import MAX_RULES_CEILING, RuleBook
from backorigin.rules.parsing import load_rules
from backorigin.tools.embedded_store import EmbeddedStore, port_is_free
from backorigin.tools.run import RunError, mitmproxy_command

SAMPLE = Path(__file__).parent / "sample"  # package data: the sample rules and the sample origin's files
SAMPLE_RULES = SAMPLE / "rules.json"
SAMPLE_ORIGIN = SAMPLE / "origin"
LOOPBACK = ("127.0.0.1", "localhost")
_URL_FIELDS = ("MirrorURL", "MirrorURLSlave", "MirrorURLProbe")


@dataclass(frozen=True)
class DemoPorts:
    proxy: int = 8080
    store: int = 8333
    origin: int = 8000
    web: int = 8081  # mitmweb's page, with --ui web


def serve_folder(folder: Path, port: int) -> ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(SimpleHTTPRequestHandler):
    """The sample origin: its requests show in the demo's output, one line each."""

    def log_message(self, format: str, *args: object) -> None:
        print(f"demo: origin: {format % args}", flush=True)


def follow_origin_port(path: Path, origin_port: int) -> list[str]:
    """Point the loopback MirrorURLs of the rules file at `path` at the demo's origin; return
    one line per URL changed. The file is the demo's own (STATE/rules.json)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    changed = []
    for bucket in document.get("Buckets", []):
        for rule in bucket.get("RoutingRules", []):
            redirect = rule.get("Redirect", {})
            for field in _URL_FIELDS:
                url = redirect.get(field)
                moved = _on_origin_port(url, origin_port) if isinstance(url, str) else None
                if moved:
                    redirect[field] = moved
                    changed.append(f"{field} {url} -> {moved}")
    if changed:
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return changed


def _on_origin_port(url: str, origin_port: int) -> str | None:
    """`url` with the demo origin's port, when it is a loopback URL on another port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.hostname not in LOOPBACK or port == origin_port:
        return None
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{origin_port}"))


def foreign_origins(book: RuleBook, origin_port: int) -> list[str]:
    """Loopback MirrorURLs of the user's rules that the demo's origin does not serve."""
    return [
        f'{book.source}: bucket "{bucket}": RuleNumber {rule.RuleNumber}: {field} {url} is not the demo\'s origin '
        f"(http://127.0.0.1:{origin_port}/): misses under it will fail"
        for bucket, rules in book.buckets.items() for rule in rules
        for field in _URL_FIELDS if (url := getattr(rule.Redirect, field, None)) and _on_origin_port(url, origin_port)
    ]


def demo_rules(rules: Path | None, state: Path, origin_port: int) -> Path:
    """The rules file the demo runs with: --rules as given, else STATE/rules.json (written from
    the sample at the first start), its loopback MirrorURLs on `origin_port`."""
    if rules is not None:
        return rules
    path = state / "rules.json"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        path.write_text(SAMPLE_RULES.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"demo: wrote {path} from the sample rules (edit it: the proxy reloads it)", flush=True)
    for line in follow_origin_port(path, origin_port):
        print(f"demo: {path}: {line} (the sample origin's port)", flush=True)
    return path


def run_demo(rules: Path | None, state: Path, ports: DemoPorts, ui: str, origin_folder: Path | None = None,
             options: Sequence[str] = ()) -> int:
    """`ui`: "dump" (mitmdump) or "web" (mitmweb, with the decision column and view)."""
    # Ctrl-C and SIGTERM both stop the demo, even when a shell started it with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    folder = origin_folder or SAMPLE_ORIGIN
    if not folder.is_dir():
        raise RunError(f"--origin {folder}: not a folder")
    if any(option.split("=", 1)[0] == "web_port" for option in options):
        raise RunError("--set web_port=...: give it with --web-port")
    web = [f"web_port={ports.web}"] if ui == "web" else []
    rules_path = demo_rules(rules, state, ports.origin)
    book = load_rules(rules_path, MAX_RULES_CEILING)  # fail before starting anything if the rules are bad
    store = EmbeddedStore(state / "store", ports.store)
    command = mitmproxy_command(ui, [store.endpoint], rules_path, f"127.0.0.1:{ports.proxy}", [*web, *options])
    wanted = {"--proxy-port": ports.proxy, "--store-port": ports.store, "--origin-port": ports.origin}
    if ui == "web":
        wanted["--web-port"] = ports.web
    busy = [f"{flag} {port}" for flag, port in wanted.items() if not port_is_free(port)]
    if busy:
        raise RunError(f"port(s) already in use: {', '.join(busy)}; pick others with "
                       f"{', '.join(flag for flag in wanted)} (or stop the other demo)")
    for warning in foreign_origins(book, ports.origin) if rules is not None else []:
        print(f"demo: warning: {warning}", file=sys.stderr, flush=True)
    print(f"demo: starting SeaweedFS on {store.endpoint} (data in {state / 'store'})", flush=True)
    store.start(log_path=state / "weed.log")
    origin = serve_folder(folder, ports.origin)
    try:
        store.create_buckets(list(book.buckets))
        with _terminal_foreground():
            return _run_proxy(command, _welcome(book, rules_path, folder, ports, ui, command), ports.proxy)
    finally:
        origin.shutdown()
        store.stop()
        print("demo: stopped", flush=True)


def _welcome(book: RuleBook, rules: Path, folder: Path, ports: DemoPorts, ui: str, command: Sequence[str]) -> str:
    bucket = next(iter(book.buckets), "example-bucket")
    proxy = f"http://127.0.0.1:{ports.proxy}"
    web = (f"\n  mitmweb:  http://127.0.0.1:{ports.web}/ (each flow's decision: the Comment column and the "
           "backorigin view)") if ui == "web" else ""
    return (
        f"demo: sample origin on http://127.0.0.1:{ports.origin}/ serving {folder}\n"
        f"demo: rules {rules} (buckets: {', '.join(book.buckets)})\n"
        f"demo: {' '.join(command)}\n\n"
        f"  Try:  curl -i {proxy}/{bucket}/hello.txt     (mirrored from the origin)\n"
        f"        curl -i {proxy}/{bucket}/hello.txt     (now served by the store)\n"
        f"        curl -i {proxy}/{bucket}/nothing-here  (origin 404 -> 404){web}\n"
        f"  Ctrl-C stops everything, once pending write-backs have landed.\n"
    )


def _run_proxy(command: Sequence[str], welcome: str, port: int) -> int:
    """The proxy in a session of its own: Ctrl-C reaches the demo only, which passes on exactly
    one SIGINT (mitmproxy's second SIGINT kills it) and waits for the write-backs to drain.
    The welcome (what to try) is printed once the proxy answers on its port."""
    proxy = subprocess.Popen(command, start_new_session=True)
    try:
        while proxy.poll() is None and not _answers(port):
            time.sleep(0.1)
        if proxy.poll() is None:
            print(welcome, flush=True)
        return proxy.wait()
    except KeyboardInterrupt:
        proxy.send_signal(signal.SIGINT)
        while True:
            try:
                return proxy.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: the drain is under way, wait for it
                print("demo: waiting for pending write-backs to land (backorigin_shutdown_timeout)", flush=True)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _terminal_foreground() -> Iterator[None]:
    """Under `make run` the terminal's Ctrl-C goes to make's whole process group, and make then
    exits as interrupted whatever the demo does. When stdin is the terminal and this process's
    group is its foreground, move the demo to a group of its own and give it the foreground, so
    Ctrl-C reaches the demo only; give it back on the way out. Anywhere else, nothing changes."""
    try:
        terminal = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC) if os.isatty(0) else None
    except OSError:
        terminal = None
    if terminal is None or os.tcgetpgrp(terminal) != os.getpgrp() or os.getpid() == os.getpgrp():
        if terminal is not None:
            os.close(terminal)
        yield
        return
    previous = os.getpgrp()
    ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may take the terminal then
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(terminal, os.getpgrp())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(terminal, previous)
            os.setpgid(0, previous)
        signal.signal(signal.SIGTTOU, ttou)
        os.close(terminal)
