"""`backorigin demo` (what `make run` runs), as a new user meets it: from an empty folder, on
ports of its own, started again on its own data, stopped with Ctrl-C (SIGINT to its whole
process group, as a terminal sends it), and as mitmweb with options passed through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from backorigin.tools.demo import SAMPLE_ORIGIN
from backorigin.tools.embedded_store import free_ports, port_is_free
from tests.support import http_get, wait_for

HELLO = (SAMPLE_ORIGIN / "hello.txt").read_bytes()


class Demo:
    """`python -m backorigin demo ARGS` in `folder`, in a process group of its own."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.log = folder / f"demo-{len(list(folder.glob('demo-*.log')))}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "backorigin", "demo", *args], cwd=folder,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.process.poll() is not None or " listening at " in self.text(), within=90)
        assert self.process.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def origin_gets(self, path: str) -> int:
        return sum(1 for line in self.text().splitlines() if line.startswith("demo: origin: ") and f'"GET {path} ' in line)

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=90)


def test_the_demo_runs_from_an_empty_folder_and_starts_again_on_its_own_data(tmp_path):
    proxy_port, origin_port = free_ports(2)
    (store_port,) = free_ports(1, with_grpc=True)
    ports = ["--proxy-port", str(proxy_port), "--store-port", str(store_port), "--origin-port", str(origin_port)]
    url = f"http://127.0.0.1:{proxy_port}/example-bucket/hello.txt"

    demo = Demo(tmp_path, *ports)
    try:
        status, headers, body = http_get(url)
        assert (status, body) == (200, HELLO), demo.text()
        assert headers["x-oss-tag"] == f"MIRROR http://127.0.0.1:{origin_port}/hello.txt"  # the rules followed the port
        wait_for(lambda: http_get(url)[1].get("server", "").startswith("SeaweedFS"), within=15)
        assert http_get(f"http://127.0.0.1:{proxy_port}/example-bucket/nothing-here")[0] == 404
    finally:
        assert demo.ctrl_c() == 0, demo.text()
    assert demo.origin_gets("/hello.txt") == 1 and "demo: stopped" in demo.text()
    rules = json.loads((tmp_path / ".demo" / "rules.json").read_text())
    assert {rule["Redirect"]["MirrorURL"] for rule in rules["Buckets"][0]["RoutingRules"]} == {f"http://127.0.0.1:{origin_port}/"}

    again = Demo(tmp_path, *ports)  # the same data: the bucket is there, hello.txt too
    try:
        status, headers, body = http_get(url)
        assert (status, body) == (200, HELLO) and headers["server"].startswith("SeaweedFS"), again.text()
    finally:
        assert again.ctrl_c() == 0, again.text()
    assert again.origin_gets("/hello.txt") == 0


def test_the_demo_under_mitmweb_on_a_web_port_of_its_own_with_options_passed_on(tmp_path):
    proxy_port, origin_port, web_port = free_ports(3)
    (store_port,) = free_ports(1, with_grpc=True)
    demo = Demo(tmp_path, "--ui", "web", "--web-port", str(web_port), "--proxy-port", str(proxy_port),
                "--store-port", str(store_port), "--origin-port", str(origin_port), "--origin", str(SAMPLE_ORIGIN),
                "--set", "backorigin_debug_header=true", "--set", "web_open_browser=false")
    try:
        wait_for(lambda: f"Web server listening at http://127.0.0.1:{web_port}/" in demo.text(), within=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as page:
            assert b"mitmproxy" in page.read()
        status, headers, _ = http_get(f"http://127.0.0.1:{proxy_port}/example-bucket/docs/readme.md")
        assert status == 200 and headers["x-backorigin"] == "rule=2 action=mirror outcome=mirrored"
    finally:
        assert demo.ctrl_c() == 0, demo.text()


def test_the_demo_says_which_port_is_taken_and_what_to_give_instead(tmp_path):
    proxy_port, origin_port, web_port = free_ports(3)
    (store_port,) = free_ports(1, with_grpc=True)
    with open(os.devnull, "wb") as quiet:
        taken = subprocess.Popen([sys.executable, "-m", "http.server", str(web_port), "--bind", "127.0.0.1"], stdout=quiet, stderr=quiet)
    try:
        wait_for(lambda: not port_is_free(web_port), within=15)
        ran = subprocess.run([sys.executable, "-m", "backorigin", "demo", "--ui", "web", "--web-port", str(web_port),
                              "--proxy-port", str(proxy_port), "--store-port", str(store_port), "--origin-port", str(origin_port)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        taken.terminate()
        taken.wait()
    assert ran.returncode == 2
    assert ran.stderr.strip().endswith(f"port(s) already in use: --web-port {web_port}; pick others with --proxy-port, "
                                       "--store-port, --origin-port, --web-port (or stop the other demo)")
    refused = subprocess.run([sys.executable, "-m", "backorigin", "demo", "--set", "web_port=1"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert (refused.returncode, refused.stderr.strip()) == (2, "backorigin demo: --set web_port=...: give it with --web-port")
