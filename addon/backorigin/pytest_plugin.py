"""pytest fixtures for replay tests of backorigin rules, built on mitmproxy's own
`mitmproxy.test.taddons` and `tflow`.

Installed with the package as a `pytest11` entry point named `backorigin`, so every pytest
run in an environment that has backorigin installed gets the fixtures `backorigin` and
`backorigin_rules`; no conftest needed (`pip install 'backorigin[pytest]'` brings pytest). An
`async def` test that uses the `backorigin` fixture runs in the fixture's event loop, so it needs
neither pytest-asyncio nor its configuration (where pytest-asyncio runs it, that works too).
A complete test file (`replay_sync` serves plain tests):

    from backorigin.pytest_plugin import assert_decision, assert_no_decision, store_flow

    RULES = {"photos": [  # bucket -> RoutingRules, or a whole rules document, or a rules file
        {"RuleNumber": 1,
         "Condition": {"KeyPrefixEquals": "old/", "HttpErrorCodeReturnedEquals": 404},
         "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://origin.example.com/"}},
    ]}

    async def test_old_photos_are_mirrored(backorigin, backorigin_rules):
        backorigin_rules(RULES)
        miss, hit = await backorigin.replay([
            store_flow("http://store:8333/photos/old/a.jpg", 404),  # the store's NoSuchKey
            store_flow("http://store:8333/photos/old/b.jpg", 200),
        ])
        assert_decision(miss, rule=1, action="mirror", outcome="replayed",
                        origin_url="http://origin.example.com/old/a.jpg")
        assert_no_decision(hit)

    def test_recorded_traffic(backorigin, backorigin_rules):
        backorigin_rules("rules.json")
        for result in backorigin.replay_sync("flows.mitm"):  # recorded with mitmdump -w flows.mitm
            print(result.flow.request.path, result.recorded, result.decision)

`replay` runs each flow through every hook as `mitmdump -nr flows.mitm` does
(`master.load_flow`), under a dry run: the addon decides, nothing is fetched from an origin,
nothing is stored, and the spool directory is in `tmp_path`. Flows read from a file and
`store_flow(...)` flows are replayed flows (outcome "replayed"); live flows such as plain
`tflow.tflow()` ones get outcome "dry-run". The addon moves a replayed flow's decision from
the recording to `flow.metadata["backorigin_recorded"]` (here `Replayed.recorded`), so
`decision` is what the current rules decided, or None: no rule acted.

mitmproxy and the addon are imported inside the fixtures: loading this plugin costs a
pytest run that never uses it nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from mitmproxy import http
    from mitmproxy.test import taddons

    from backorigin.addon import BackOrigin
    from backorigin.rules.model import RuleBook

# backorigin.decision's keys, without importing the addon here (tests/addon/test_pytest_plugin.py checks they agree)
METADATA_KEY = "backorigin"
RECORDED_KEY = "backorigin_recorded"
FlowSource = Union[str, "os.PathLike[str]", Iterable["http.HTTPFlow"]]
Rules = Union[str, "os.PathLike[str]", Mapping[str, Any]]


@dataclass(frozen=True)
class Replayed:
    """One flow after a replay: `recorded` is the decision the recording carried,
    `decision` the one made now (both `flow.metadata["backorigin"]` dicts, or None)."""

    flow: http.HTTPFlow
    recorded: dict[str, Any] | None
    decision: dict[str, Any] | None


class BackOriginHarness:
    """The `backorigin` fixture: a BackOrigin addon under `taddons.context`, dry run on."""

    def __init__(self, tctx: taddons.context, addon: BackOrigin, rules_dir: Path) -> None:
        self.tctx = tctx
        self.addon = addon
        self._rules_dir = rules_dir
        self._written = 0

    def configure(self, **options: Any) -> None:
        """Set addon options, e.g. `backorigin_vhost_domains=["s3.example.com"]`."""
        self.tctx.configure(self.addon, **options)

    def load_rules(self, rules: Rules) -> RuleBook:
        """A rules file, or a dict: a whole document ({"Buckets": [...]}) or {bucket: [rules]}.
        A bad one raises mitmproxy's OptionsError with the addon's message."""
        if isinstance(rules, Mapping):
            document = rules if "Buckets" in rules else {
                "Buckets": [{"Name": name, "RoutingRules": list(r)} for name, r in rules.items()]
            }
            self._written += 1
            path = self._rules_dir / f"backorigin-rules-{self._written}.json"
            path.write_text(json.dumps(document, indent=1), encoding="utf-8")
        else:
            path = Path(rules)
        from mitmproxy.exceptions import OptionsError

        from backorigin.rules.model import RulesError
        from backorigin.rules.parsing import load_rules

        try:  # checked first: a refused option is rolled back, and the roll-back's error would hide this one
            load_rules(path, self.tctx.options.backorigin_max_rules)
        except RulesError as e:
            raise OptionsError(str(e)) from None
        self.configure(backorigin_rules=str(path))
        return self.addon.context.rulebook

    async def replay(self, flows: FlowSource) -> list[Replayed]:
        """Run a `.mitm` file's flows (or these flows) through the addon, one at a time."""
        from mitmproxy import http

        if not self.addon.context.rulebook.source:
            raise RuntimeError("backorigin: no rules loaded; call backorigin_rules(...) first")
        if isinstance(flows, (str, os.PathLike)):
            flows = read_flows(flows)
        results = []
        for flow in flows:
            if not isinstance(flow, http.HTTPFlow):
                continue
            await self.tctx.master.load_flow(flow)  # the addon sets the recording's decision aside
            results.append(Replayed(flow, flow.metadata.get(RECORDED_KEY), flow.metadata.get(METADATA_KEY)))
        return results

    def replay_sync(self, flows: FlowSource) -> list[Replayed]:
        """`replay` for tests that are not async."""
        if _loop_running():
            raise RuntimeError("backorigin.replay_sync: an event loop is running; use `await backorigin.replay(...)`")
        return self.tctx.master.event_loop.run_until_complete(self.replay(flows))


def read_flows(path: str | os.PathLike[str]) -> list[http.HTTPFlow]:
    """The HTTP flows of a file written by `mitmdump -w` (mitmproxy.io.FlowReader)."""
    from mitmproxy import http, io

    with open(path, "rb") as f:
        return [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]


def store_flow(
    url: str, status: int = 404, *, method: str = "GET", code: str | None = None, body: bytes = b"",
    request_headers: Mapping[str, str] | None = None, response_headers: Mapping[str, str] | None = None,
    live: bool = False,
) -> http.HTTPFlow:
    """A flow as the store answered it: `url` is the request as it reached the store
    (path-style: http://STORE/bucket/key). A 404 carries S3's NoSuchKey XML and a 403
    AccessDenied unless `code` says otherwise (`code=""`: no error body; a HEAD never has
    one). `live=False` makes it a replayed flow, as if read from a file."""
    from mitmproxy.net.http import status_codes
    from mitmproxy.test import tflow, tutils

    from backorigin.s3 import replies
    from backorigin.s3.addressing import ObjectRef

    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"store_flow: {url!r} is not an absolute URL")
    scheme = parts.scheme or "http"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sent = {"host": parts.netloc, **{k.lower(): v for k, v in (request_headers or {}).items()}}
    request = tutils.treq(
        scheme=scheme.encode(), host=parts.hostname, port=parts.port or (443 if scheme == "https" else 80),
        method=method.upper().encode(), path=target.encode(), content=b"", headers=_headers(sent),
    )
    code = {404: "NoSuchKey", 403: "AccessDenied"}.get(status, "") if code is None else code
    answered = {k.lower(): v for k, v in (response_headers or {}).items()}
    if code and method.upper() != "HEAD":
        bucket, _, key = parts.path.lstrip("/").partition("/")
        body = replies.error_body(code, code, ObjectRef(bucket, key), replies.new_request_id())
        answered.setdefault("content-type", "application/xml")
    answered.setdefault("content-length", str(len(body)))
    response = tutils.tresp(
        status_code=status, reason=status_codes.RESPONSES.get(status, "").encode(), headers=_headers(answered), content=body,
    )
    flow = tflow.tflow(req=request, resp=response)
    if scheme != "https":  # tflow's client connection has TLS; redirects use the client's scheme
        flow.client_conn.timestamp_tls_setup = None
    flow.live = live
    return flow


def _headers(values: Mapping[str, str]) -> http.Headers:
    from mitmproxy import http

    return http.Headers([(name.encode(), value.encode()) for name, value in values.items()])


def assert_decision(target: Replayed | http.HTTPFlow | Mapping[str, Any] | None, **expected: Any) -> dict[str, Any]:
    """Fail unless the flow carries a backorigin decision whose fields have these values
    (any of bucket, key, action, rule, outcome, origin_url, location, origin_status, bytes,
    writeback, detail). Returns the decision."""
    __tracebackhide__ = True
    known = _decision_fields()
    if unknown := sorted(set(expected) - known):
        raise TypeError(f"assert_decision: no decision field {', '.join(unknown)}; fields: {', '.join(sorted(known))}")
    decision, where = _decision_of(target)
    if decision is None:
        raise AssertionError(f"backorigin made no decision for {where}; expected {_show(expected)}")
    wrong = {name: value for name, value in expected.items() if decision.get(name) != value}
    if wrong:
        lines = [f"backorigin decision for {where} differs:"]
        lines += [f"  {name}: expected {value!r}, got {decision.get(name)!r}" for name, value in wrong.items()]
        lines.append(f"  the decision: {_show(decision)}")
        raise AssertionError("\n".join(lines))
    return dict(decision)


def assert_no_decision(target: Replayed | http.HTTPFlow | Mapping[str, Any] | None) -> None:
    """Fail if the flow carries a backorigin decision."""
    __tracebackhide__ = True
    decision, where = _decision_of(target)
    if decision is not None:
        raise AssertionError(f"backorigin decided on {where}, expected no decision: {_show(decision)}")


def _decision_of(target: Replayed | http.HTTPFlow | Mapping[str, Any] | None) -> tuple[Mapping[str, Any] | None, str]:
    if isinstance(target, Replayed):
        return target.decision, _describe(target.flow)
    if target is None or isinstance(target, Mapping):
        return target, "the flow"
    return target.metadata.get(METADATA_KEY), _describe(target)


def _describe(flow: http.HTTPFlow) -> str:
    status = flow.response.status_code if flow.response is not None else "no response"
    return f"{flow.request.method} {flow.request.pretty_url} ({status})"


def _show(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _decision_fields() -> set[str]:
    from backorigin.decision import Decision

    return {f.name for f in fields(Decision)}


# fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def backorigin(tmp_path: Path) -> Iterator[BackOriginHarness]:
    """A BackOrigin addon under mitmproxy's taddons: dry run, spool in tmp_path, no rules
    until `backorigin_rules(...)`. Use `await backorigin.replay(...)` (or `replay_sync`)."""
    from mitmproxy.addonmanager import Loader
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.test import taddons

    from backorigin.addon import BackOrigin
    from backorigin.writeback.proxyspools import release

    owns_loop = not _loop_running()  # taddons.context makes its own event loop then
    addon = BackOrigin()
    with taddons.context() as tctx:
        Proxyserver().load(Loader(tctx.master))  # the proxy's options (keep_host_header...), not its servers
        tctx.master.addons.add(addon)
        tctx.configure(addon, backorigin_spool_dir=str(tmp_path / "backorigin-spool"), backorigin_dry_run=True)
        yield BackOriginHarness(tctx, addon, tmp_path)
        if owns_loop:  # drain (write-backs, when a test turned the dry run off) and close; lets go of the spool
            loop = tctx.master.event_loop
            loop.run_until_complete(_done(addon))
            loop.close()
        else:
            release(addon.parts.writeback.spool.directory)


@pytest.fixture
def backorigin_rules(backorigin: BackOriginHarness) -> Callable[[Rules], RuleBook]:
    """Load rules into the `backorigin` addon: `backorigin_rules("rules.json")`,
    `backorigin_rules({"bucket": [rule, ...]})` or a whole rules document; returns the RuleBook."""
    return backorigin.load_rules


# mitmproxy's dependencies import names they deprecate; not for a user's test run to report
DEPENDENCY_WARNINGS = (
    "ignore:.*is deprecated. Please use:DeprecationWarning:ldap3",
    "ignore:'crypt' is deprecated:DeprecationWarning:passlib",
)


def pytest_configure(config: pytest.Config) -> None:
    for line in DEPENDENCY_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an `async def` test that uses the `backorigin` fixture in the fixture's own event loop
    (mitmproxy's), as `replay_sync` does. A test pytest-asyncio runs arrives here already made
    synchronous, and any other test is left to pytest and its plugins."""
    if "backorigin" not in pyfuncitem.fixturenames or not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    harness: BackOriginHarness = pyfuncitem.funcargs["backorigin"]  # type: ignore[assignment]
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    harness.tctx.master.event_loop.run_until_complete(pyfuncitem.obj(**arguments))
    return True


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _done(addon: BackOrigin) -> None:
    await addon.done()
