"""`backorigin demo`: the whole set-up on one machine, for a first look.

Starts an embedded SeaweedFS store, a sample origin serving ./sample-origin, creates the
buckets named in the rules file, then runs the documented mitmdump command. Ctrl-C stops all.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from backorigin.rules.files import load_rules
from backorigin.tools.embedded_store import EmbeddedStore, port_is_free
from backorigin.tools.run import mitmproxy_command


def serve_folder(folder: Path, port: int) -> ThreadingHTTPServer:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_demo(rules: Path, state: Path, proxy_port: int, store_port: int, origin_port: int, ui: str) -> int:
    """`ui`: "dump" (mitmdump) or "web" (mitmweb, with the decision column and view)."""
    # Ctrl-C and SIGTERM both stop the demo, even when a shell started it with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rulebook = load_rules(rules)  # fail before starting anything if the rules are bad
    busy = [p for p in (proxy_port, store_port, origin_port) if not port_is_free(p)]
    if busy:
        print(f"demo: port(s) {busy} already in use; pick others with --proxy-port/--store-port/--origin-port", file=sys.stderr)
        return 2
    store = EmbeddedStore(state / "store", store_port)
    print(f"demo: starting SeaweedFS on {store.endpoint} (data in {state / 'store'})", flush=True)
    store.start(log_path=state / "weed.log")
    origin = serve_folder(Path("sample-origin"), origin_port)
    try:
        store.create_buckets(list(rulebook.buckets))
        command = mitmproxy_command(ui, [store.endpoint], rules, f"127.0.0.1:{proxy_port}", [])
        bucket = next(iter(rulebook.buckets), "example-bucket")
        print(
            f"demo: sample origin on http://127.0.0.1:{origin_port}/ (./sample-origin); buckets: "
            f"{', '.join(rulebook.buckets)}\n"
            f"demo: {' '.join(command)}\n\n"
            f"  Try:  curl -i http://127.0.0.1:{proxy_port}/{bucket}/hello.txt     (mirrored from the origin)\n"
            f"        curl -i http://127.0.0.1:{proxy_port}/{bucket}/hello.txt     (now served by the store)\n"
            f"        curl -i http://127.0.0.1:{proxy_port}/{bucket}/nothing-here  (origin 404 -> 404)\n"
            f"  Ctrl-C stops everything.\n",
            flush=True,
        )
        proxy = subprocess.Popen(command)
        try:
            return proxy.wait()
        except KeyboardInterrupt:  # stop mitmdump the same way; it drains its write-backs
            proxy.send_signal(signal.SIGINT)
            return proxy.wait()
    finally:
        origin.shutdown()
        store.stop()
        print("demo: stopped", flush=True)
