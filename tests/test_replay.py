"""Replay tests with recorded flows: tests/data/trial.mitm (made by tests/data/record_trial.py)
under rules other than the ones it was recorded with, through the real mitmdump (`-nr`, and
`--server-replay` as an offline store) and through the package's pytest plugin
(addon/pytest_plugin.py: the `backorigin` and `backorigin_rules` fixtures)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
from mitmproxy.test import tflow

import backorigin.pytest_plugin
from backorigin.pytest_plugin import (
    assert_decision,
    assert_no_decision,
    read_flows,
    store_flow,
)
from backorigin.tools.embedded_store import free_ports
from tests.data.record_trial import BUCKET, HIT_BODY, OTHER
from tests.origin_server import body_for
from tests.support import (
    MITMDUMP,
    REPO,
    Mitmdump,
    http_get,
    mirror_rule,
    wait_stored,
    write_rules,
)

TRIAL = REPO / "tests" / "data" / "trial.mitm"
# the recording, in order (see tests/data/record_trial.py)
PATHS = [f"/{BUCKET}/{key}" for key in ("hit.txt", "ok/a.txt", "missing/b.txt", "docs/c.html", "error500/d.txt")] + [
    f"/{OTHER}/e.txt", f"/{BUCKET}/ok/a.txt"]


def new_rules(origin_base: str) -> dict[str, list[dict]]:
    """Rules unlike the recording's: other origins, a redirect in place of a mirror, a
    bucket the recording had no rules for, none for docs/ (the recording redirected it)."""
    return {
        BUCKET: [
            mirror_rule(1, f"{origin_base}/replay-new/", "missing/"),
            {"RuleNumber": 2, "Condition": {"KeyPrefixEquals": "error500/"},
             "Redirect": {"RedirectType": "External", "HostName": "errors.example.com", "HttpRedirectCode": 307}},
            mirror_rule(3, f"{origin_base}/replay-new/", "ok/"),
        ],
        OTHER: [{"RuleNumber": 1, "Condition": {"HttpErrorCodeReturnedEquals": 404},
                 "Redirect": {"RedirectType": "AliCDN", "HostName": "cdn.example.com"}}],
    }


def expected_redecisions(origin_base: str) -> dict[str, dict]:
    """What the new rules decide for the recorded 404s (and for rule 2, which needs no 404)."""
    return {
        f"/{BUCKET}/missing/b.txt": dict(bucket=BUCKET, key="missing/b.txt", action="mirror", rule=1, outcome="replayed",
                                         origin_url=f"{origin_base}/replay-new/missing/b.txt", origin_status=None),
        f"/{BUCKET}/error500/d.txt": dict(action="external", rule=2, outcome="replayed",
                                          location="http://errors.example.com/error500/d.txt"),
        f"/{OTHER}/e.txt": dict(bucket=OTHER, key="e.txt", action="alicdn", rule=1, outcome="replayed",
                                location="http://cdn.example.com/e.txt"),
    }


def objects(s3) -> dict[str, str]:
    """Every object of the trial buckets in the session store: key -> ETag."""
    found = {}
    for bucket in (BUCKET, OTHER):
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            found[f"{bucket}/{item['Key']}"] = item["ETag"]
    return found


@pytest.fixture(scope="module")
def trial_buckets(store):
    store.create_buckets([BUCKET, OTHER])


def replay_with_mitmdump(tmp_path, rules, store) -> list:
    """mitmdump -nr tests/data/trial.mitm -s addon/script.py --set backorigin_rules=NEW -w OUT;
    write-backs, were there any, would go to the session store."""
    out = tmp_path / "out.mitm"
    run = subprocess.run(
        [MITMDUMP, "-nr", str(TRIAL), "-s", "addon/script.py", "--set", f"backorigin_rules={rules}",
         "--set", f"confdir={tmp_path / 'confdir'}", "--set", f"backorigin_s3_endpoint={store.endpoint}", "-w", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return read_flows(out)


# mitmdump -nr: re-deciding a recording ----------------------------------------------------


def test_the_recording_has_the_trial_mix():
    flows = read_flows(TRIAL)
    assert [f.request.path for f in flows] == PATHS
    assert [None if f.response is None else f.response.status_code for f in flows] == [200, 200, 404, 301, 424, 404, 200]
    assert all(not f.live for f in flows)
    outcomes = [f.metadata.get("backorigin", {}).get("outcome") for f in flows]
    assert outcomes == [None, "mirrored", "origin-404", "redirected", "mirror-failed", None, None]
    assert flows[-1].response is not None
    assert flows[-1].response.headers["x-oss-tag"].startswith("MIRROR http://127.0.0.1:")  # a hit on a mirrored object


def test_mitmdump_replay_redecides_recorded_404s_without_side_effects(tmp_path, store, s3, origin, trial_buckets):
    rules = write_rules(tmp_path / "new.json", new_rules(origin.base))
    before = objects(s3)
    flows = replay_with_mitmdump(tmp_path, rules, store)
    recorded = read_flows(TRIAL)

    assert [f.request.path for f in flows] == PATHS
    by_path = {f.request.path: f for f in flows[:-1]}
    for path, expected in expected_redecisions(origin.base).items():
        assert_decision(by_path[path], **expected)
        assert by_path[path].comment.startswith(f"backorigin: rule {expected['rule']} {expected['action']} replayed")
    assert by_path[f"/{BUCKET}/missing/b.txt"].marked == ":arrows_counterclockwise:"
    assert by_path[f"/{OTHER}/e.txt"].marked == ":arrow_right_hook:"
    assert_no_decision(by_path[f"/{BUCKET}/hit.txt"])
    assert_no_decision(flows[-1])  # the hit on the mirrored object

    for before_flow, after in zip(recorded, flows, strict=True):  # every answer left as recorded
        assert after.response is not None and before_flow.response is not None
        assert (after.response.status_code, after.response.headers.fields, after.response.raw_content) == (
            before_flow.response.status_code, before_flow.response.headers.fields, before_flow.response.raw_content)
    assert origin.requests_for("/replay-new/") == []
    assert objects(s3) == before
    spool = tmp_path / "confdir" / "backorigin-spool"
    assert [p for p in spool.rglob("*") if p.is_file()] == []


def test_mitmdump_replay_redecides_flows_the_recording_acted_on(tmp_path, store, origin, trial_buckets):
    rules = write_rules(tmp_path / "new.json", new_rules(origin.base))
    flows = replay_with_mitmdump(tmp_path, rules, store)
    outcomes = {(f.request.path, f.metadata.get("backorigin", {}).get("outcome")) for f in flows}
    assert {outcome for _, outcome in outcomes} <= {None, "replayed"}, sorted(outcomes, key=str)
    mirrored, redirected = flows[1], flows[3]
    assert_decision(mirrored, rule=3, action="mirror", outcome="replayed", origin_url=f"{origin.base}/replay-new/ok/a.txt")
    assert_no_decision(redirected)  # the new rules have nothing for docs/


# mitmdump --server-replay: the recording as an offline store --------------------------------


def offline_rules(origin_base: str) -> dict[str, list[dict]]:
    return {
        BUCKET: [
            mirror_rule(1, f"{origin_base}/offline/", "missing/", EnableReplacePrefix=True, ReplaceKeyPrefixWith="found/"),
            mirror_rule(2, f"{origin_base}/offline/", "new/"),
        ],
        OTHER: [mirror_rule(1, f"{origin_base}/offline/")],
    }


@pytest.fixture(scope="module")
def offline_proxy(tmp_path_factory, store, origin, trial_buckets):
    """mitmdump --mode reverse:http://NOTHING -s addon/script.py --server-replay trial.mitm
    --set server_replay_extra=404 --set connection_strategy=lazy ...: the store is never
    contacted (nothing listens there); write-backs go to the session store."""
    work = tmp_path_factory.mktemp("offline")
    rules = write_rules(work / "offline.json", offline_rules(origin.base))
    nowhere = f"http://127.0.0.1:{free_ports(1)[0]}"
    proxy = Mitmdump(
        f"reverse:{nowhere}", rules, work,
        {"server_replay_extra": "404", "connection_strategy": "lazy", "server_replay_reuse": "true",
         "server_replay_ignore_host": "true", "server_replay_ignore_port": "true",
         "backorigin_s3_endpoint": store.endpoint, "backorigin_origin_timeout": "5"},
        extra_args=["--server-replay", str(TRIAL)],
    ).start()
    yield proxy
    proxy.stop()


def test_offline_pipeline_replays_storage_and_mirrors_recorded_misses(offline_proxy, origin, s3):
    get = lambda path: http_get(offline_proxy.url + path)  # noqa: E731
    assert get(f"/{BUCKET}/hit.txt")[::2] == (200, HIT_BODY)
    status, headers, body = get(f"/{BUCKET}/ok/a.txt")  # the recorded mirrored answer
    assert (status, body) == (200, body_for("/dir1/ok/a.txt")) and headers["x-oss-tag"].startswith("MIRROR ")
    status, headers, _ = get(f"/{BUCKET}/docs/c.html")
    assert (status, headers["location"]) == (301, "http://docs.example.com/docs/c.html")
    assert get(f"/{BUCKET}/error500/d.txt")[0] == 424

    # recorded NoSuchKey answers are misses now, mirrored live from the local origin
    assert get(f"/{BUCKET}/missing/b.txt")[::2] == (200, body_for("/offline/found/b.txt"))
    assert get(f"/{OTHER}/e.txt")[::2] == (200, body_for("/offline/e.txt"))
    assert [r.path for r in origin.requests_for("/offline/found/") + origin.requests_for("/offline/e.txt")] == [
        "/offline/found/b.txt", "/offline/e.txt"]
    wait_stored(s3, BUCKET, "missing/b.txt")
    wait_stored(s3, OTHER, "e.txt")
    assert "server_playback: returned" not in offline_proxy.log()  # every one was in the recording


def test_offline_pipeline_mirrors_unrecorded_keys(offline_proxy, origin, unique):
    status, _, body = http_get(f"{offline_proxy.url}/{BUCKET}/new/{unique}.txt")
    assert "server_playback: returned 404 non-replay request" in offline_proxy.log()
    assert (status, body) == (200, body_for(f"/offline/new/{unique}.txt"))


# the pytest plugin ---------------------------------------------------------------------------


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


def test_plugin_agrees_with_mitmdump(tmp_path, backorigin, backorigin_rules, store, origin, trial_buckets):
    rules = write_rules(tmp_path / "new.json", new_rules(origin.base))
    backorigin_rules(rules)
    ours = [r.decision for r in backorigin.replay_sync(TRIAL)]
    theirs = [f.metadata.get("backorigin") for f in replay_with_mitmdump(tmp_path, rules, store)]
    redecided = [i for i, d in enumerate(theirs) if d and d["outcome"] == "replayed"]
    assert len(redecided) == 4  # the three recorded 404s and the recorded mirror
    assert [ours[i] for i in redecided] == [theirs[i] for i in redecided]


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


def test_the_docstring_example_runs_in_a_project_of_its_own(tmp_path, origin):
    """The plugin's own example, in a directory with no conftest: only the entry point loads
    the fixtures."""
    docstring = backorigin.pytest_plugin.__doc__
    example = textwrap.dedent(docstring.split("plain tests):\n\n", 1)[1].split("\n\n`replay`", 1)[0])
    (tmp_path / "test_example.py").write_text(example)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    write_rules(tmp_path / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/example/", "missing/")]})
    shutil.copyfile(TRIAL, tmp_path / "flows.mitm")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_example.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    assert f"/{BUCKET}/missing/b.txt " in run.stdout and "'outcome': 'replayed'" in run.stdout
    assert origin.requests_for("/example/") == []


def test_plugin_keys_are_the_addons():
    from backorigin import pytest_plugin
    from backorigin.ui import decision

    assert (pytest_plugin.METADATA_KEY, pytest_plugin.RECORDED_KEY) == (decision.METADATA_KEY, decision.RECORDED_KEY)
