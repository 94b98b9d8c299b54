"""The `backorigin` command's offline parts, run in this process: help, explain, a bad rules
file reported before mitmproxy starts, the mitmproxy command line `run` builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from backorigin.tools.run import WEB_COLUMNS, mitmproxy_command
from tests.support import run_cli


@pytest.mark.parametrize("command", ["", "run", "demo", "import-rules", "export-rules", "explain", "ledger-missing",
                                     "backfill", "verify"])
def test_help_is_the_reference(command):
    done = run_cli(*([command] if command else []), "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: backorigin")


def test_explain_is_offline(rules_file, origin):
    done = run_cli("explain", "http://store:8333/mirror-bucket/order/x.txt", "--rules", rules_file)
    assert done.returncode == 0, done.stderr
    assert f"missing object (404 NoSuchKey): RuleNumber 4 Mirror: GET {origin.base}/dir2/order/x.txt" in done.stdout


def test_a_bad_rules_file_is_reported_before_mitmproxy_starts(tmp_path):
    bad = tmp_path / "rules.json"
    bad.write_text('{"Buckets": [{"Name": "b", "RoutingRules": [{"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror"}}]}]}')
    done = run_cli("run", "--store", "http://127.0.0.1:1", "--rules", bad)
    assert done.returncode == 2 and f"{bad}: bucket \"b\": RuleNumber 1" in done.stderr


def test_run_loads_the_packaged_script_in_reverse_mode():
    command = mitmproxy_command("dump", "http://s:1", Path("r.json"), "[::1]:8080", [], ["--", "-v"])
    assert Path(command[0]).name == "mitmdump"
    script = Path(command[command.index("-s") + 1])
    assert script.read_text().splitlines()[-1] == "addons = [BackOrigin()]"
    assert command[command.index("--mode") + 1] == "reverse:http://s:1" and command[-1] == "-v"
    assert command[command.index("--listen-host") + 1] == "::1"


def test_web_ui_gets_one_web_columns_option_per_column(tmp_path):
    command = mitmproxy_command("web", "http://s:1", tmp_path / "r.json", "127.0.0.1:8080", ["keep_host_header=true"])
    assert Path(command[0]).name == "mitmweb"
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert [s for s in sets if s.startswith("web_columns=")] == [f"web_columns={c}" for c in WEB_COLUMNS]
    assert "web_columns=comment" in sets and "keep_host_header=true" in sets
