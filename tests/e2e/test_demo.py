"""`make run`: `python -m backorigin demo` from the repository root starts a store, the sample
origin and the proxy; a miss is mirrored and then served by the store; Ctrl-C stops everything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from backorigin.tools.embedded_store import free_ports
from tests.support import REPO, http_get, wait_for


def test_the_demo_mirrors_a_sample_file_then_the_store_serves_it(tmp_path):
    proxy_port, origin_port = free_ports(2)
    (store_port,) = free_ports(1, with_grpc=True)
    rules = json.loads((REPO / "rules.json").read_text())
    for rule in rules["Buckets"][0]["RoutingRules"]:  # the shipped rules, on this test's origin port
        rule["Redirect"]["MirrorURL"] = f"http://127.0.0.1:{origin_port}/"
    (tmp_path / "rules.json").write_text(json.dumps(rules))
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "backorigin", "demo", "--rules", str(tmp_path / "rules.json"), "--state", str(tmp_path / "state"),
             "--proxy-port", str(proxy_port), "--store-port", str(store_port), "--origin-port", str(origin_port)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: demo.poll() is not None or " listening at " in log.read_text(errors="replace"), within=60)
        assert demo.poll() is None, log.read_text()
        url = f"http://127.0.0.1:{proxy_port}/example-bucket/hello.txt"
        first = http_get(url)
        assert first[0] == 200 and first[2] == (REPO / "sample-origin" / "hello.txt").read_bytes()
        assert first[1]["x-oss-tag"] == f"MIRROR http://127.0.0.1:{origin_port}/hello.txt"
        wait_for(lambda: "server" in (answer := http_get(url))[1] and answer[1]["server"].startswith("SeaweedFS"), within=15)
        assert http_get(f"http://127.0.0.1:{proxy_port}/example-bucket/nothing-here")[0] == 404
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0, log.read_text()
    assert "demo: stopped" in log.read_text()
