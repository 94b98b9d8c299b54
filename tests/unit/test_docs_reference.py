"""What the documentation states about the code, checked against the code: the options reference
(docs/options.md) is the one the options' declarations make, and names every option mitmproxy
holds with its default; the Kubernetes manifests parse and their backorigin commands parse with
the command's own parser (a test machine has no cluster to run them on)."""

from __future__ import annotations

import re
import shlex

import yaml
from mitmproxy.test import taddons

from backorigin.addon import BackOrigin
from backorigin.tools import cli
from backorigin.tools.options_reference import page
from tests.support import REPO

DOCS = REPO / "docs"


def test_the_options_reference_is_current():
    assert (DOCS / "options.md").read_text() == page(), (
        "docs/options.md is not what the options' declarations make: run `make docs` (or "
        "`.venv/bin/python -m backorigin.tools.options_reference docs/options.md`)")


def test_the_options_reference_names_every_option_mitmproxy_holds_with_its_default():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(backorigin_\w+)` \| [^|]+ \| ([^|]+) \|", page(), re.MULTILINE)}
    with taddons.context() as tctx:
        tctx.master.addons.add(BackOrigin())
        held = {name: tctx.options._options[name].default for name in tctx.options.keys() if name.startswith("backorigin_")}
    assert sorted(rows) == sorted(held)
    for name, default in held.items():
        shown = rows[name].strip()
        assert shown == ("none" if default in (None, []) else f"`{str(default).lower() if isinstance(default, bool) else default}`")


def commands_of(manifest: dict) -> list[list[str]]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    return [container["command"] + container.get("args", []) for container in containers]


def test_the_kubernetes_manifests_parse_and_their_commands_too():
    for name in ("backfill-job.yaml", "report-merge-job.yaml"):
        (manifest,) = list(yaml.safe_load_all((DOCS / name).read_text()))
        assert manifest["kind"] == "Job"
        for command in commands_of(manifest):
            if command[:2] == ["sh", "-c"]:  # a shell for its glob: the backorigin command in it
                command = shlex.split(command[2])
            assert command[0] == "backorigin"
            cli.parser().parse_args(command[1:])  # SystemExit (a failure) when a flag or value is wrong
