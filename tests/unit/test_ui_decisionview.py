"""The `backorigin` content view: what it shows, when "auto" picks it, and its add/remove."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from mitmproxy import contentviews
from mitmproxy.test import taddons, tflow

from backorigin.decision import METADATA_KEY, RECORDED_KEY, Action, Decision, Outcome, Recorder
from backorigin.ui.decisionview import (
    DECISION_PRIORITY,
    NO_DECISION,
    VIEW_NAME,
    WIDTH,
    DecisionView,
    ViewBackorigin,
)

MIRRORED = Decision(
    bucket="example-bucket", key="hello.txt", action=Action.MIRROR, rule=2, outcome=Outcome.MIRRORED,
    origin_url="http://127.0.0.1:8000/hello.txt", origin_status=200, bytes=13, writeback="queued",
    store_status=404,
)
REDIRECTED = Decision(
    bucket="example-bucket", key="docs/a.md", action=Action.EXTERNAL, rule=3, outcome=Outcome.REDIRECTED,
    location="https://example.com/docs/a.md",
)


def lines(result) -> list[str]:
    return ["".join(text for _, text in line) for line in result[1]]


def pairs(result) -> dict[str, str]:
    found = {}
    for line in lines(result):
        if not line.startswith(" "):  # a value's continuation lines have no key
            key, _, value = line.partition(":")
            found[key.strip()] = value.strip()
    return found


def decided(decision: Decision):
    f = tflow.tflow(resp=True)
    Recorder().record(f, decision, acted=True)
    return f


@pytest.fixture
def view():
    return ViewBackorigin()


def test_shows_a_mirror_decision(view):
    f = decided(MIRRORED)
    description, _ = result = view(f.response.content, flow=f, http_message=f.response)
    assert description == "backorigin: mirrored"
    assert pairs(result) == {
        "what happened": "mirrored", "rule": "2", "action": "mirror", "outcome": "mirrored", "bucket": "example-bucket", "key": "hello.txt",
        "origin URL": "http://127.0.0.1:8000/hello.txt", "origin status": "200", "store status": "404",
        "bytes": "13", "write-back": "queued",
    }


def test_shows_the_location_of_a_redirect_and_the_detail(view):
    f = decided(Decision(**{**asdict(REDIRECTED), "detail": "origin said so"}))
    result = view(b"", flow=f)
    shown = pairs(result)
    assert shown["Location"] == "https://example.com/docs/a.md"
    assert "origin URL" not in shown
    assert shown["origin status"] == "-" and shown["write-back"] == "-" and shown["bytes"] == "0"
    assert shown["detail"] == "origin said so"


def test_lists_each_rule_tried_and_wraps_long_values(view):
    tried = ["rule 1: KeySuffixEquals '.svg': the key does not end with it", "rule 2: every condition holds: this rule acts"]
    detail = "cannot connect to 127.0.0.1:8000: Connection refused; " * 5
    f = decided(Decision(**{**asdict(MIRRORED), "outcome": Outcome.MIRROR_FAILED, "failure": "origin unreachable",
                            "rules_tried": tried, "detail": detail}))
    description, _ = result = view(b"", flow=f)
    assert description == "backorigin: 424 origin unreachable"
    shown = lines(result)
    start = shown.index(next(line for line in shown if line.startswith("rules tried:")))
    assert [line.split(":", 1)[1].strip() if i == 0 else line.strip() for i, line in enumerate(shown[start:start + 2])] == tried
    assert shown[start + 1].startswith(" " * len("what happened: "))  # a continuation line has no key
    at = shown.index(next(line for line in shown if line.startswith("detail:")))
    continued = shown[at + 1:]
    assert len(continued) >= 2 and all(line.startswith(" " * len("what happened: ")) for line in continued)
    assert " ".join(line.split(":", 1)[1].strip() if i == 0 else line.strip() for i, line in enumerate(shown[at:])) == detail.strip()
    assert max(len(line) for line in shown) <= WIDTH + len("what happened: ")


def test_keys_line_up(view):
    result = view(b"", flow=decided(MIRRORED))
    columns = {line.index(line.split(": ", 1)[1].lstrip()) for line in lines(result)}
    assert len(columns) == 1


def test_says_so_without_a_decision(view):
    f = tflow.tflow(resp=True)
    assert f.response is not None
    assert lines(view(f.response.content, flow=f, http_message=f.response)) == [NO_DECISION]
    assert lines(view(b"", flow=None)) == [NO_DECISION]
    f.metadata[METADATA_KEY] = "not a decision"
    assert lines(view(b"", flow=f)) == [NO_DECISION]


def test_a_replayed_flow_shows_the_recorded_decision_below(view):
    f = tflow.tflow(resp=True)
    f.metadata[RECORDED_KEY] = asdict(MIRRORED)
    shown = lines(view(b"", flow=f))
    assert shown[0] == NO_DECISION
    assert any(line.startswith("outcome:") and line.endswith("mirrored") for line in shown)


def test_is_the_default_view_of_flows_with_a_decision(view):
    f = decided(MIRRORED)
    assert view.render_priority(b"hello", flow=f, http_message=f.response) == DECISION_PRIORITY
    assert view.render_priority(b"", flow=f, http_message=f.request) == DECISION_PRIORITY
    # higher than every view mitmproxy ships, e.g. JSON for a JSON body
    best = max(
        v.render_priority(b'{"a": 1}', content_type="application/json", flow=f, http_message=f.response)
        for v in contentviews.views if v.name != VIEW_NAME
    )
    assert DECISION_PRIORITY > best


def test_is_never_the_default_without_a_decision(view):
    f = tflow.tflow(resp=True)
    assert view.render_priority(b"", flow=f, http_message=f.response) == 0
    assert view.render_priority(b"", flow=None) == 0
    assert view.render_priority(b"") == 0


def test_a_request_body_keeps_its_own_view(view):
    f = decided(MIRRORED)
    f.request.content = b"a=1"
    assert view.render_priority(b"a=1", flow=f, http_message=f.request) == 0


def test_auto_picks_it_through_mitmproxy():
    addon = DecisionView()
    with taddons.context(addon):
        f = decided(MIRRORED)
        description, _, error = contentviews.get_message_content_view("Auto", f.response, f)
        assert error is None and description == "backorigin: mirrored"
        plain = tflow.tflow(resp=True)
        assert plain.response is not None
        description, _, _ = contentviews.get_message_content_view("Auto", plain.response, plain)
        assert not description.startswith("backorigin")
        assert contentviews.get(VIEW_NAME) is addon.view
    addon.done()
    assert contentviews.get(VIEW_NAME) is None


def test_load_and_done_are_idempotent():
    first, second = DecisionView(), DecisionView()
    try:
        first.load(None)
        first.load(None)
        assert [v for v in contentviews.views if v.name == VIEW_NAME] == [first.view]
        second.load(None)  # a reloaded script whose previous instance was never done
        assert [v for v in contentviews.views if v.name == VIEW_NAME] == [second.view]
        first.done()
        assert contentviews.get(VIEW_NAME) is second.view
        second.done()
        second.done()
        assert contentviews.get(VIEW_NAME) is None
    finally:
        first.done()
        second.done()
