"""The `backorigin` command as pip installs it: help, offline explain, `run` in front of a real
store, and the package it installs (`import backorigin`, no top-level `addon`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from backorigin.tools.cli import WEB_COLUMNS, mitmproxy_command
from backorigin.tools.embedded_store import free_ports
from tests.origin_server import body_for
from tests.support import BACKORIGIN, REPO, http_get, wait_until_listening


def backorigin(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKORIGIN, *args], capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.parametrize("command", ["", "run", "demo", "import-rules", "export-rules", "explain", "ledger-missing"])
def test_help_is_the_reference(command):
    done = backorigin(*([command] if command else []), "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: backorigin")


def test_explain_is_offline(rules_file, origin):
    done = backorigin("explain", "http://store:8333/mirror-bucket/order/x.txt", "--rules", str(rules_file))
    assert done.returncode == 0, done.stderr
    assert f"missing object (404 NoSuchKey): RuleNumber 4 Mirror: GET {origin.base}/dir2/order/x.txt" in done.stdout


def test_a_bad_rules_file_is_reported_before_mitmproxy_starts(tmp_path):
    bad = tmp_path / "rules.json"
    bad.write_text('{"Buckets": [{"Name": "b", "RoutingRules": [{"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror"}}]}]}')
    done = backorigin("run", "--store", "http://127.0.0.1:1", "--rules", str(bad))
    assert done.returncode == 2 and f"{bad}: bucket \"b\": RuleNumber 1" in done.stderr


def test_web_ui_gets_one_web_columns_option_per_column(tmp_path):
    command = mitmproxy_command("web", "http://s:1", tmp_path / "r.json", "127.0.0.1:8080", ["keep_host_header=true"])
    assert Path(command[0]).name == "mitmweb"
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert [s for s in sets if s.startswith("web_columns=")] == [f"web_columns={c}" for c in WEB_COLUMNS]
    assert "web_columns=comment" in sets and "keep_host_header=true" in sets


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
