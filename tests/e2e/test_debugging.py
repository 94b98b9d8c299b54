"""Debugging a migration interactively: what every flow says about itself, the commands,
rules reloading, dry runs and the miss ledger."""

from __future__ import annotations

import json
import os
import subprocess
import time

from mitmproxy import io as flow_io

from tests.origin_server import body_for
from tests.support import (
    BACKORIGIN,
    REPO,
    Mitmdump,
    http_get,
    mirror_rule,
    stored,
    wait_for,
    wait_stored,
    write_rules,
)

BUCKET = "mirror-bucket"


def recorded(path) -> list:
    with open(path, "rb") as f:
        return list(flow_io.FlowReader(f).stream())


def test_every_flow_says_what_happened(tmp_path, store, origin, rules_file, unique):
    flows_file = tmp_path / "flows.mitm"
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules_file, tmp_path,
                     {"backorigin_debug_header": "true", "backorigin_origin_timeout": "1.5"},
                     extra_args=["-w", str(flows_file)]).start()
    try:
        status, headers, _ = http_get(f"{proxy.url}/{BUCKET}/ok/{unique}")
        assert headers["x-backorigin"] == "rule=5 action=mirror outcome=mirrored"
        http_get(f"{proxy.url}/{BUCKET}/error500/{unique}")
        http_get(f"{proxy.url}/{BUCKET}/nofollow/1/{unique}")
    finally:
        proxy.stop()
    by_path = {f.request.path.split("/", 2)[2]: f for f in recorded(flows_file)}
    mirrored = by_path[f"ok/{unique}"]
    assert mirrored.metadata["backorigin"] == {
        "bucket": BUCKET, "key": f"ok/{unique}", "action": "mirror", "rule": 5, "outcome": "mirrored",
        "origin_url": f"{origin.base}/dir1/ok/{unique}", "location": "", "origin_status": 200,
        "bytes": len(body_for(f"/dir1/ok/{unique}")), "writeback": "queued", "detail": "", "store_status": 404,
        "failure": "", "rules_tried": [  # RuleNumber order, not file order; each with the condition that did not hold
            "rule 1: KeyPrefixEquals 'pass/': the key does not start with it",
            "rule 2: KeyPrefixEquals 'passall/': the key does not start with it",
            "rule 3: KeyPrefixEquals 'nofollow/': the key does not start with it",
            "rule 4: KeyPrefixEquals 'order/': the key does not start with it",
            "rule 5: every condition holds: this rule acts"],
    }
    assert mirrored.comment == (f"mirrored · rule 5 · {origin.base}/dir1/ok/{unique} · "
                                f"{len(body_for(f'/dir1/ok/{unique}'))} bytes · write-back queued")
    assert mirrored.marked == "M"
    failed = by_path[f"error500/{unique}"]
    assert failed.metadata["backorigin"]["outcome"] == "mirror-failed" and failed.marked == "X"
    assert failed.comment == f"424 origin 500 · rule 5 · {origin.base}/dir1/error500/{unique}"
    assert by_path[f"nofollow/1/{unique}"].metadata["backorigin"]["outcome"] == "origin-redirect"
    assert by_path[f"nofollow/1/{unique}"].comment.startswith("origin 302 passed on · rule 3 · ")


def test_a_failed_mirror_names_the_origin_and_a_covered_hit_says_so(tmp_path, store, s3, rules_file, unique):
    """An origin that cannot be reached: `424 origin unreachable` first, and its log line names the
    URL asked (not aiohttp's objects). A hit on a key a rule covers says the store had it."""
    rules = write_rules(tmp_path / "rules.json", {BUCKET: [
        mirror_rule(1, "http://127.0.0.1:9/", "down/"), mirror_rule(2, "http://127.0.0.1:9/", "", ".txt")]})
    s3.put_object(Bucket=BUCKET, Key=f"there/{unique}.txt", Body=b"in the store")
    flows_file = tmp_path / "flows.mitm"
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path, extra_args=["-w", str(flows_file)]).start()
    try:
        assert http_get(f"{proxy.url}/{BUCKET}/down/{unique}")[0] == 424
        assert http_get(f"{proxy.url}/{BUCKET}/there/{unique}.txt")[0] == 200
    finally:
        proxy.stop()
    failed, hit = recorded(flows_file)
    assert failed.comment == f"424 origin unreachable · rule 1 · http://127.0.0.1:9/down/{unique}" and failed.marked == "X"
    assert failed.metadata["backorigin"]["detail"] == "cannot connect to 127.0.0.1:9: Connection refused"
    assert f"GET http://127.0.0.1:9/down/{unique} -> cannot connect to 127.0.0.1:9: Connection refused" in proxy.log()
    assert "SSLContext" not in proxy.log()
    assert hit.comment == "store hit · rule 2 covers the key; the store has it" and not hit.marked


def test_dry_run_decides_without_touching_origin_or_store(tmp_path, store, s3, origin, rules_file, unique):
    flows_file = tmp_path / "flows.mitm"
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules_file, tmp_path, {"backorigin_dry_run": "true"},
                     extra_args=["-w", str(flows_file)]).start()
    try:
        status, _, body = http_get(f"{proxy.url}/{BUCKET}/ok/{unique}")
    finally:
        proxy.stop()
    assert status == 404 and b"NoSuchKey" in body  # the store's own answer
    assert origin.requests_for(unique) == [] and stored(s3, BUCKET, f"ok/{unique}") is None
    (flow,) = recorded(flows_file)
    assert flow.metadata["backorigin"]["outcome"] == "dry-run"
    assert flow.metadata["backorigin"]["origin_url"] == f"{origin.base}/dir1/ok/{unique}"


def test_rules_reload_when_the_file_changes_and_a_bad_edit_keeps_the_old_rules(tmp_path, store, origin, unique):
    rules = write_rules(tmp_path / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/", "first/")]})
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path).start()
    try:
        assert http_get(f"{proxy.url}/{BUCKET}/second/{unique}")[0] == 404
        write_rules(rules, {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/", "second/")]})
        os.utime(rules, (time.time() + 5, time.time() + 5))  # a different mtime even within one clock tick
        wait_for(lambda: proxy.log().count("rules for 1 bucket(s)") == 2)
        assert http_get(f"{proxy.url}/{BUCKET}/second/{unique}")[0] == 200
        rules.write_text('{"Buckets": [{"Name": "mirror-bucket", "RoutingRules": [{"RuleNumber": 1, "Redirect": {}}]}]}')
        os.utime(rules, (time.time() + 10, time.time() + 10))
        wait_for(lambda: "rules not reloaded, the previous rules stay in force" in proxy.log())
        assert f'{rules}: bucket "mirror-bucket": RuleNumber 1: field Redirect.RedirectType: Field required' in proxy.log()
        assert http_get(f"{proxy.url}/{BUCKET}/second/{unique}-b")[0] == 200  # still the good rules
    finally:
        proxy.stop()


def test_ledger_and_backfill_list(tmp_path, store, s3, origin, unique):
    rules = write_rules(tmp_path / "rules.json", {BUCKET: [
        mirror_rule(1, f"{origin.base}/dir1/", "passonly/", MirrorProxyPass=True),
        mirror_rule(2, f"{origin.base}/dir1/"),
    ]})
    ledger = tmp_path / "misses.jsonl"
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path, {"backorigin_ledger": str(ledger)}).start()
    try:
        for key in (f"ok/{unique}", f"missing/{unique}", f"passonly/{unique}"):
            http_get(f"{proxy.url}/{BUCKET}/{key}")
        wait_stored(s3, BUCKET, f"ok/{unique}")
    finally:
        proxy.stop()
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["key"], e["outcome"]) for e in entries] == [
        (f"ok/{unique}", "mirrored"), (f"missing/{unique}", "origin-404"), (f"passonly/{unique}", "mirrored")]
    listing = subprocess.run(
        [BACKORIGIN, "ledger-missing", str(ledger), "--store", store.endpoint],
        capture_output=True, text=True, cwd=REPO, env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == [f"s3://{BUCKET}/passonly/{unique}"]  # served, never stored
    assert "1 key(s) still missing" in listing.stderr
