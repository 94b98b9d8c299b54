"""The `backorigin` command's offline parts, run in this process: help, explain, a bad rules
file reported before mitmproxy starts, the mitmproxy command line `run` builds."""

from __future__ import annotations

import argparse
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from backorigin.tools import cli
from backorigin.tools.run import WEB_COLUMNS, mitmproxy_command, notes
from backorigin.writeback.proxyspools import SPOOLS
from tests.support import REPO, run_cli, write_rules


@pytest.mark.parametrize("command", ["", "run", "demo", "import-rules", "export-rules", "explain", "ledger-missing",
                                     "backfill", "verify", "spools", "report"])
def test_help_is_the_reference(command):
    done = run_cli(*([command] if command else []), "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: backorigin")


def test_every_option_of_every_command_says_what_it_is():
    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    silent = [f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
              for parser in parsers(cli.parser()) for action in parser._actions
              if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert silent == []


def test_version_is_the_packages():
    done = run_cli("--version")
    assert (done.returncode, done.stdout) == (0, f"backorigin {version('backorigin')}\n")
    assert version("backorigin") == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_explain_takes_a_path_with_its_store_or_says_in_one_line_what_it_needs(tmp_path):
    rules = write_rules(tmp_path / "rules.json", {"photos": [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "old/", "HttpErrorCodeReturnedEquals": 404},
         "Redirect": {"RedirectType": "External", "HttpRedirectCode": 301}}]})
    done = run_cli("explain", "/photos/old/a.jpg", "--store", "http://store:8333", "--rules", rules)
    assert done.returncode == 0, done.stderr
    assert "missing object (404 NoSuchKey): RuleNumber 1 External: 301 to http://store:8333/photos/old/a.jpg" in done.stdout
    for args, message in [
        (["/photos/old/a.jpg"], "/photos/old/a.jpg is a path: give the store it goes to with --store URL (or a whole URL)"),
        (["photos/old/a.jpg"], "'photos/old/a.jpg' is not a URL: give http(s)://STORE/bucket/key, or /bucket/key with --store URL"),
        (["http://store:8333/photos/a", "--store", "http://s:1"], "http://store:8333/photos/a names its store already: "
                                                                  "--store is for a path (/bucket/key)"),
        (["/photos/a", "--store", "store:8333"], "--store 'store:8333': expected http://HOST[:PORT] or https://HOST[:PORT]"),
    ]:
        refused = run_cli("explain", *args, "--rules", rules)
        assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", f"backorigin explain: {message}\n")


def test_spools_lists_what_each_holds_and_removes_the_empty_ones(tmp_path):
    spools = tmp_path / SPOOLS
    (spools / "reverse-127.0.0.1-8080" / "tombstones").mkdir(parents=True)
    (spools / "reverse-127.0.0.1-8080" / "a.json").write_text("{}")
    (spools / "reverse-127.0.0.1-8081" / "failed").mkdir(parents=True)
    done = run_cli("spools", "--confdir", tmp_path, "--remove-empty")
    assert done.returncode == 0 and done.stdout.splitlines() == [
        f"{spools}/reverse-127.0.0.1-8080: 1 pending, 0 failed, 0 tombstone(s); no proxy uses it",
        f"{spools}/reverse-127.0.0.1-8081: 0 pending, 0 failed, 0 tombstone(s); no proxy uses it; removed",
    ]
    assert [p.name for p in spools.iterdir()] == ["reverse-127.0.0.1-8080"]
    assert run_cli("spools", "--confdir", tmp_path / "none").stdout == f"no spools in {tmp_path / 'none'}\n"


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
    command = mitmproxy_command("dump", ["http://s:1"], Path("r.json"), "[::1]:8080", [], ["--", "-v"])
    assert Path(command[0]).name == "mitmdump"
    script = Path(command[command.index("-s") + 1])
    assert script.read_text().splitlines()[-1] == "addons = [BackOrigin()]"
    assert command[command.index("--mode") + 1] == "reverse:http://s:1" and command[-1] == "-v"
    assert command[command.index("--listen-host") + 1] == "::1"


def test_web_ui_gets_one_web_columns_option_per_column(tmp_path):
    command = mitmproxy_command("web", ["http://s:1"], tmp_path / "r.json", "127.0.0.1:8080", ["keep_host_header=true"])
    assert Path(command[0]).name == "mitmweb"
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert [s for s in sets if s.startswith("web_columns=")] == [f"web_columns={c}" for c in WEB_COLUMNS]
    assert "web_columns=comment" in sets and "keep_host_header=true" in sets


# backorigin run --mode ---------------------------------------------------------------------


def sets_of(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]


def command_for(mode: str = "reverse", store: str | None = "http://s:1", options=(), extra=()) -> list[str]:
    return mitmproxy_command("dump", [store] if store else [], Path("r.json"), "127.0.0.1:8080", list(options), list(extra), mode)


def test_reverse_mode_keeps_the_clients_host_for_signed_clients():
    command = command_for()
    assert command[command.index("--mode") + 1] == "reverse:http://s:1"
    assert "keep_host_header=true" in sets_of(command)


def test_reverse_mode_keep_host_header_can_be_turned_off_and_is_then_given_once():
    sets = sets_of(command_for(options=["keep_host_header=false"]))
    assert [s for s in sets if s.startswith("keep_host_header=")] == ["keep_host_header=false"]
    sets = sets_of(command_for(extra=["--", "--set", "keep_host_header=false"]))  # after --: mitmproxy's own
    assert [s for s in sets if s.startswith("keep_host_header=")] == ["keep_host_header=false"]


@pytest.mark.parametrize("mode, spec", [
    ("regular", "regular"),
    ("transparent", "transparent"),
    ("upstream:http://proxy.internal:3128", "upstream:http://proxy.internal:3128"),
    ("upstream:https://proxy.internal:3128/", "upstream:https://proxy.internal:3128"),
])
def test_the_other_modes_name_their_stores_and_leave_host_alone(mode, spec):
    command = command_for(mode)
    assert command[command.index("--mode") + 1] == spec
    assert "backorigin_stores=http://s:1" in sets_of(command)
    assert not any(s.startswith(("keep_host_header=", "backorigin_s3_endpoint=")) for s in sets_of(command))


def test_each_store_in_the_other_modes_is_one_the_proxy_acts_for():
    command = mitmproxy_command("dump", ["https://store.internal:9000/", "http://other:1"], Path("r.json"), "127.0.0.1:8080", [],
                                [], "regular")
    assert [s for s in sets_of(command) if s.startswith("backorigin_stores=")] == [
        "backorigin_stores=https://store.internal:9000", "backorigin_stores=http://other:1"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "reverse"], "--mode reverse (the default) needs --store URL"),
    ([], "--mode reverse (the default) needs --store URL"),
    (["--mode", "reverse:http://s:1"], "name the store with --store URL and leave --mode reverse bare"),
    (["--mode", "socks5"], "expected one of reverse, regular, transparent, upstream:URL"),
    (["--mode", "upstream"], "--mode upstream:URL needs the proxy to go through"),
    (["--mode", "upstream:ftp://p:21"], "--mode upstream:URL 'ftp://p:21': expected http://HOST[:PORT]"),
    (["--mode", "regular:x"], "regular mode takes no URL"),
    (["--store", "127.0.0.1:8333"], "--store '127.0.0.1:8333': expected http://HOST[:PORT] or https://HOST[:PORT]"),
    (["--store", "http://s:1/bucket"], "only scheme, host and port"),
    (["--store", "http://s:99999"], "--store 'http://s:99999': Port out of range"),
    (["--mode", "regular"], "--mode regular needs --store URL (repeatable): the stores the proxy acts for"),
    (["--store", "http://a:1", "--store", "http://b:2"], "--mode reverse (the default) needs --store URL, once"),
    (["--store", "http://s:1", "--set", "mode=regular"], "--set mode=... : give it with --mode"),
    (["--store", "http://s:1", "--set", "listen_port=1"], "--set listen_port=... : give it with --listen"),
    (["--store", "http://s:1", "--", "--mode", "regular"], "--mode after --: give it with --mode"),
    (["--store", "http://s:1", "--", "-p", "1"], "-p after --: give it with --listen"),
    (["--store", "http://s:1", "--set", "novalue"], "--set 'novalue' is not NAME=VALUE"),
    (["--store", "http://s:1", "--listen", "8080"], "--listen '8080' is not HOST:PORT"),
])
def test_run_refuses_what_cannot_work_before_mitmproxy_starts(args, message):
    done = run_cli("run", *args)  # every one returns before the rules file is read or mitmproxy exec'd
    assert done.returncode == 2
    assert done.stderr.startswith("backorigin run: ") and message in done.stderr, done.stderr


def test_run_says_what_it_does_not_set_up():
    assert notes("reverse", [], "127.0.0.1:8080") == []
    (regular,) = notes("regular", ["confdir=/etc/bo"], "127.0.0.1:8080")
    assert "HTTPS_PROXY (and HTTP_PROXY) to http://127.0.0.1:8080" in regular
    assert "trust /etc/bo/mitmproxy-ca-cert.pem (AWS_CA_BUNDLE)" in regular
    (transparent,) = notes("transparent", [], "10.200.0.1:8081")
    assert "~/.mitmproxy/mitmproxy-ca-cert.pem" in transparent and "iptables or nft REDIRECT" in transparent
