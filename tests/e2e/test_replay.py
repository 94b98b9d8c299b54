"""Replay tests with recorded flows: tests/data/trial.mitm (made by tests/data/record_trial.py)
under rules other than the ones it was recorded with, through the real mitmdump (`-nr`, and
`--server-replay` as an offline store); the package's pytest plugin agrees with it. (The plugin's
own tests are tests/addon/test_pytest_plugin.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

import backorigin.pytest_plugin
from backorigin.pytest_plugin import (
    assert_decision,
    assert_no_decision,
    read_flows,
)
from backorigin.tools.embedded_store import free_ports
from backorigin.writeback.proxyspools import default_spool
from tests.data.record_trial import BUCKET, HIT_BODY, OTHER
from tests.origin_server import body_for
from tests.replay_support import PATHS, TRIAL, expected_redecisions, new_rules
from tests.support import (
    MITMDUMP,
    REPO,
    Mitmdump,
    http_get,
    mirror_rule,
    wait_stored,
    write_rules,
)


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
        verb = "mirror" if expected["action"] == "mirror" else "redirect"
        assert by_path[path].comment.startswith(f"replayed: would {verb} · rule {expected['rule']} · ")
    assert by_path[f"/{BUCKET}/missing/b.txt"].marked == "M"
    assert by_path[f"/{OTHER}/e.txt"].marked == "R"
    assert_no_decision(by_path[f"/{BUCKET}/hit.txt"])
    assert_no_decision(flows[-1])  # the hit on the mirrored object

    for before_flow, after in zip(recorded, flows, strict=True):  # every answer left as recorded
        assert after.response is not None and before_flow.response is not None
        assert (after.response.status_code, after.response.headers.fields, after.response.raw_content) == (
            before_flow.response.status_code, before_flow.response.headers.fields, before_flow.response.raw_content)
    assert origin.requests_for("/replay-new/") == []
    assert objects(s3) == before
    spool = default_spool(tmp_path / "confdir", ["regular"])  # mitmdump -n: regular mode, no listen address given
    assert not spool.exists()  # nothing spooled: a proxy that leaves nothing in its spool removes it


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


# the pytest plugin against mitmdump -------------------------------------------------------


def test_plugin_agrees_with_mitmdump(tmp_path, backorigin, backorigin_rules, store, origin, trial_buckets):
    rules = write_rules(tmp_path / "new.json", new_rules(origin.base))
    backorigin_rules(rules)
    ours = [r.decision for r in backorigin.replay_sync(TRIAL)]
    theirs = [f.metadata.get("backorigin") for f in replay_with_mitmdump(tmp_path, rules, store)]
    redecided = [i for i, d in enumerate(theirs) if d and d["outcome"] == "replayed"]
    assert len(redecided) == 4  # the three recorded 404s and the recorded mirror
    assert [ours[i] for i in redecided] == [theirs[i] for i in redecided]


def test_the_docstring_example_runs_in_a_project_of_its_own(tmp_path, origin):
    """The plugin's own example, in a directory with no conftest and no configuration: only the
    entry point loads the fixtures, and the plugin itself runs the async test (pytest-asyncio is
    left out with -p no:asyncio)."""
    docstring = backorigin.pytest_plugin.__doc__
    example = textwrap.dedent(docstring.split("plain tests):\n\n", 1)[1].split("\n\n`replay`", 1)[0])
    (tmp_path / "test_example.py").write_text(example)
    write_rules(tmp_path / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/example/", "missing/")]})
    shutil.copyfile(TRIAL, tmp_path / "flows.mitm")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:asyncio", "test_example.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    assert f"/{BUCKET}/missing/b.txt " in run.stdout and "'outcome': 'replayed'" in run.stdout
    assert origin.requests_for("/example/") == []
