"""The package's pytest plugin (backorigin.pytest_plugin: the `backorigin` and `backorigin_rules`
fixtures), on the trial recording and on hand-made flows, all in this process."""

from __future__ import annotations

import pytest
from mitmproxy.test import tflow

import backorigin.pytest_plugin
from backorigin.pytest_plugin import assert_decision, assert_no_decision, store_flow
from tests.data.record_trial import BUCKET, OTHER
from tests.replay_support import PATHS, TRIAL, expected_redecisions, new_rules
from tests.support import REPO, mirror_rule


def test_plugin_is_loaded_by_its_entry_point(pytestconfig):
    assert pytestconfig.pluginmanager.get_plugin("backorigin") is backorigin.pytest_plugin
    assert "pytest_plugins" not in (REPO / "tests" / "conftest.py").read_text()


async def test_plugin_replays_the_recording_like_mitmdump(backorigin, backorigin_rules, origin):
    book = backorigin_rules(new_rules(origin.base))
    assert sorted(book.buckets) == [BUCKET, OTHER]
    results = await backorigin.replay(TRIAL)

    assert [r.flow.request.path for r in results] == PATHS
    by_path = {r.flow.request.path: r for r in results[:-1]}
    for path, expected in expected_redecisions(origin.base).items():
        assert_decision(by_path[path], **expected)
    assert by_path[f"/{BUCKET}/missing/b.txt"].recorded["outcome"] == "origin-404"  # the recording's decision
    assert by_path[f"/{BUCKET}/ok/a.txt"].recorded["outcome"] == "mirrored"
    assert_no_decision(by_path[f"/{BUCKET}/hit.txt"])
    assert origin.requests_for("/replay-new/") == []


async def test_plugin_on_hand_made_flows(backorigin, backorigin_rules, origin, unique):
    backorigin_rules({"Buckets": [{"Name": "photos", "RoutingRules": [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "hidden/"},
         "Redirect": {"RedirectType": "External", "HostName": "elsewhere.example.com", "HttpRedirectCode": 308}},
        mirror_rule(2, f"{origin.base}/dir1/", "old/"),
    ]}]})
    store = "http://127.0.0.1:8333"
    miss = store_flow(f"{store}/photos/old/{unique}.jpg")
    live_miss = store_flow(f"{store}/photos/old/{unique}-live.jpg", live=True)
    hidden = store_flow(f"{store}/photos/hidden/{unique}.jpg", 200, body=b"secret")
    head_miss = store_flow(f"{store}/photos/old/{unique}.jpg", 404, method="HEAD")  # answered as the object will
    untouched = [
        store_flow(f"{store}/photos/old/{unique}.jpg", 200, body=b"jpeg"),             # a hit
        store_flow(f"{store}/photos/old/{unique}.jpg", 404, code="NoSuchBucket"),      # not a missing key
        store_flow(f"{store}/photos/new/{unique}.jpg"),                                # no rule for new/
        store_flow(f"{store}/videos/old/{unique}.jpg"),                                # no rules for videos
        tflow.tflow(resp=True),                                                        # not an S3 object call
    ]
    results = await backorigin.replay([miss, live_miss, hidden, head_miss, *untouched])

    assert_decision(results[0], rule=2, action="mirror", outcome="replayed", origin_url=f"{origin.base}/dir1/old/{unique}.jpg")
    assert_decision(results[1], rule=2, outcome="dry-run")  # a live flow under the fixture's dry run
    assert_decision(results[2], rule=1, action="external", outcome="replayed",
                    location=f"http://elsewhere.example.com/hidden/{unique}.jpg")
    assert hidden.response is not None and miss.response is not None
    assert (hidden.response.status_code, hidden.response.content) == (200, b"secret")  # answer left as it was
    assert miss.response.status_code == 404 and b"<Code>NoSuchKey</Code>" in (miss.response.content or b"")  # None: no body
    assert_decision(results[3], rule=2, action="mirror", outcome="replayed")
    for result in results[4:]:
        assert_no_decision(result)
    assert origin.requests_for(unique) == []


def test_assert_decision_says_what_differs(backorigin, backorigin_rules, origin):
    backorigin_rules({"photos": [mirror_rule(1, f"{origin.base}/dir1/")]})
    (result,) = backorigin.replay_sync([store_flow("http://s3.local/photos/cat.jpg")])
    decision = assert_decision(result.flow, bucket="photos", key="cat.jpg")
    assert decision == result.decision
    with pytest.raises(AssertionError) as failed:
        assert_decision(result, rule=2, outcome="mirrored", action="mirror")
    assert str(failed.value).splitlines()[:3] == [
        "backorigin decision for GET http://s3.local/photos/cat.jpg (404) differs:",
        "  rule: expected 2, got 1",
        "  outcome: expected 'mirrored', got 'replayed'",
    ]
    assert "the decision: bucket='photos', key='cat.jpg', action='mirror', rule=1" in str(failed.value)
    with pytest.raises(AssertionError, match=r"decided on GET http://s3.local/photos/cat.jpg \(404\), expected no decision"):
        assert_no_decision(result)
    with pytest.raises(AssertionError, match="backorigin made no decision for GET .*/photos/dog.jpg \\(200\\); expected rule=1"):
        assert_decision(store_flow("http://s3.local/photos/dog.jpg", 200), rule=1)
    with pytest.raises(TypeError, match="no decision field rule_number; fields: action, bucket"):
        assert_decision(result, rule_number=1)


def test_plugin_refuses_bad_rules_and_replays_without_rules(backorigin, backorigin_rules):
    with pytest.raises(RuntimeError, match=r"no rules loaded; call backorigin_rules\(...\) first"):
        backorigin.replay_sync(TRIAL)
    from mitmproxy.exceptions import OptionsError

    with pytest.raises(OptionsError, match='bucket "photos": RuleNumber 1: field Redirect.RedirectType'):
        backorigin_rules({"photos": [{"RuleNumber": 1, "Redirect": {}}]})


def test_plugin_keys_are_the_addons():
    from backorigin import decision, pytest_plugin

    assert (pytest_plugin.METADATA_KEY, pytest_plugin.RECORDED_KEY) == (decision.METADATA_KEY, decision.RECORDED_KEY)
