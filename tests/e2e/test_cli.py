"""The `backorigin` command as pip installs it: `run` in front of a real store, and the package it
installs (`import backorigin`, no top-level `addon`). Its offline commands: tests/unit/test_tools_cli.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import zipfile

from backorigin.tools.embedded_store import free_ports
from tests.origin_server import body_for
from tests.support import BACKORIGIN, REPO, http_get, wait_until_listening


def test_run_serves_a_miss_in_front_of_the_store(tmp_path, store, origin, rules_file, unique):
    """From another directory, as an installed command: mitmdump with the addon, reverse mode."""
    port = free_ports(1)[0]
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [BACKORIGIN, "run", "--store", store.endpoint, "--rules", str(rules_file), "--listen", f"127.0.0.1:{port}",
             "--set", f"confdir={tmp_path / 'confdir'}", "--set", "backorigin_origin_timeout=5"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(process, lambda: log.read_text(errors="replace"), 30)
        status, _, body = http_get(f"http://127.0.0.1:{port}/mirror-bucket/ok/{unique}")
        assert status == 200 and body == body_for(f"/dir1/ok/{unique}")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


def test_the_wheel_installs_backorigin_and_no_addon_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("backorigin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("backorigin-")} == {"backorigin"}
    assert {"backorigin/py.typed", "backorigin/addon.py", "backorigin/tools/cli.py", "backorigin/scripts/mitmproxy_addon.py"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "backorigin = backorigin.tools.cli:main" in text and "backorigin = backorigin.pytest_plugin" in text
