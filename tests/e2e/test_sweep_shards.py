"""The sweep across machines: `backorigin backfill --shard K/4` in four processes at once, each with
its own state and report, against the session's SeaweedFS and the scripted HTTP origin (whose own
log counts the GETs of each key), and `--origin-listing` with shards against the S3 origin;
`backorigin report merge` adds the shards' reports up to what one process reports, for backfill
and for verify."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from backorigin.tombstones.tombstones import LocalTombstones
from backorigin.tools.shards import shard_of
from tests.origin_server import body_for
from tests.support import BACKORIGIN, mirror_rule, run_cli, write_rules
from tests.sweep_support import s3_origin_rule

SHARDED, SINGLE, LISTED = "shards-four", "shards-one", "shards-listed"
KEYS = 2000
SHARDS = 4


@pytest.fixture(scope="module")
def rules(tmp_path_factory, store, origin, s3_origin):
    store.create_buckets([SHARDED, SINGLE, LISTED])
    listed_rule = s3_origin_rule(s3_origin)
    listed_rule["Condition"]["KeyPrefixEquals"] = "k19"  # k1900 ... k1999 of the 2,000: to keep the test short
    return write_rules(tmp_path_factory.mktemp("shards-rules") / "rules.json", {
        SHARDED: [mirror_rule(1, f"{origin.base}/dir1/")],
        SINGLE: [mirror_rule(1, f"{origin.base}/dir1/")],
        LISTED: [listed_rule],
    })


def sweep_argv(name: str, rules: Path, store, bucket: str, *more: object) -> list[str]:
    return [name, "--rules", str(rules), "--store", store.endpoint, "--bucket", bucket, *map(str, more)]


Command = tuple[list[str], dict[str, str]]  # `backorigin` arguments, more environment variables


def run_at_once(commands: list[Command], cwd: Path, within: float = 240) -> tuple[list[int], float]:
    """`backorigin ARGS` processes started together (each with more environment variables):
    their exit statuses, and the seconds until the last one ended."""
    started = time.monotonic()
    processes = [subprocess.Popen([BACKORIGIN, *argv], cwd=cwd, env={**os.environ, **more}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for argv, more in commands]
    statuses = []
    for process in processes:
        try:
            _, errors = process.communicate(timeout=max(1.0, within - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            for every in processes:
                every.kill()
            raise
        assert process.returncode in (0, 1), errors
        statuses.append(process.returncode)
    return statuses, time.monotonic() - started


def journal_keys(state: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (state / "journal.jsonl").read_text().splitlines()]


def comparable(report: dict) -> dict:
    """What a merged report and a single run's report must agree on (not the time, not the order of problems)."""
    return {"keys": report["keys"], "counts": report["counts"], "bytes_copied": report.get("bytes_copied"),
            "unfinished": report["unfinished"], "ok": report["ok"],
            "problems": sorted((p["key"], p["result"]) for p in report["problems"])}


def test_four_shards_copy_every_key_once_and_add_up_to_one_process(rules, store, s3, origin, unique, tmp_path):
    plain = [f"{unique}/s{n:04d}" for n in range(KEYS)]
    present, gone, broken, deleted = (f"{unique}/present.txt", f"{unique}/missing/gone.txt", f"{unique}/error500/x.txt",
                                      f"{unique}/deleted.txt")
    for bucket in (SHARDED, SINGLE):
        s3.put_object(Bucket=bucket, Key=present, Body=body_for(f"/dir1/{present}"))
        LocalTombstones(tmp_path / "tombstones").add(bucket, deleted)
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"{key}\n" for key in [*plain, present, gone, broken, deleted]))
    common = ("--keys", keys, "--tombstones", tmp_path / "tombstones", "--concurrency", 8)

    # shards 0-2 by --shard, shard 3 as a Kubernetes Indexed Job's pod gets it; the default state folders
    shards: list[Command] = [
        (sweep_argv("backfill", rules, store, SHARDED, *common, "--shard", f"{k}/{SHARDS}", "--report", f"shard-{k}.json"), {})
        for k in range(SHARDS - 1)]
    shards.append((sweep_argv("backfill", rules, store, SHARDED, *common, "--report", f"shard-{SHARDS - 1}.json"),
                   {"JOB_COMPLETION_INDEX": str(SHARDS - 1), "JOB_COMPLETIONS": str(SHARDS)}))
    statuses, four_took = run_at_once(shards, tmp_path)
    assert statuses == [1 if shard_of(broken, SHARDS) == k else 0 for k in range(SHARDS)]  # only broken's shard failed

    gets = Counter(r.path for r in origin.received if r.method == "GET" and unique in r.path)
    assert [key for key in plain if gets[f"/dir1/{key}"] != 1] == []  # every key copied exactly once across shards
    assert gets[f"/dir1/{present}"] == 0 and gets[f"/dir1/{deleted}"] == 0
    journals = [journal_keys(tmp_path / ".backfill" / f"shard-{k}-of-{SHARDS}") for k in range(SHARDS)]
    assert sorted(key for journal in journals for key in journal) == sorted(keys.read_text().split())
    assert all(shard_of(key, SHARDS) == k for k, journal in enumerate(journals) for key in journal)
    assert [json.loads((tmp_path / f"shard-{k}.json").read_text())["shard"] for k in range(SHARDS)] == \
        [f"{k}/{SHARDS}" for k in range(SHARDS)]

    merge = run_cli("report", "merge", *(tmp_path / f"shard-{k}.json" for k in range(SHARDS)), "--out", tmp_path / "merged.json")
    assert merge.returncode == 1, merge.stderr  # the broken key failed
    assert merge.stdout.startswith(f"backfill of s3://{SHARDED} at {store.endpoint}: {KEYS + 4} key(s) (4 shards merged")
    assert f"failed: {broken}: " in merge.stdout

    single, one_took = run_at_once([(sweep_argv("backfill", rules, store, SINGLE, *common, "--state", "single-state",
                                                "--report", "single.json"), {})], tmp_path)
    assert single == [1]
    merged, one = (json.loads((tmp_path / name).read_text()) for name in ("merged.json", "single.json"))
    assert comparable(merged) == comparable(one)
    assert merged["counts"] == {"copied": KEYS, "already-present": 1, "origin-404": 1, "tombstoned": 1, "proxy-pass": 0,
                                "redirected": 0, "failed": 1}
    print(f"backfill of {KEYS + 4} keys: {SHARDS} shards at once {four_took:.1f}s, one process {one_took:.1f}s")


def test_shards_of_an_origin_listing_cover_it_once_then_verify_by_shard(rules, store, s3, tmp_path):
    argvs: list[Command] = [(sweep_argv("backfill", rules, store, LISTED, "--origin-listing", "--shard", f"{k}/{SHARDS}",
                                        "--report", f"backfill-{k}.json"), {}) for k in range(SHARDS)]
    statuses, _ = run_at_once(argvs, tmp_path)
    assert statuses == [0] * SHARDS
    reports = [json.loads((tmp_path / f"backfill-{k}.json").read_text()) for k in range(SHARDS)]
    assert [report["keys"] for report in reports] == [sum(1 for n in range(1900, 2000) if shard_of(f"k{n}", SHARDS) == k)
                                                      for k in range(SHARDS)]
    assert sum(report["counts"]["copied"] for report in reports) == 100
    stored = {entry["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=LISTED)
              for entry in page.get("Contents", [])}
    assert stored == {f"k{n}" for n in range(1900, 2000)}

    s3.delete_object(Bucket=LISTED, Key="k1950")  # lost behind the proxy's back: verify must say so
    for k in range(SHARDS):
        ran = run_cli(*sweep_argv("verify", rules, store, LISTED, "--origin-listing", "--shard", f"{k}/{SHARDS}",
                                  "--report", tmp_path / f"verify-{k}.json"))
        assert ran.returncode == (1 if shard_of("k1950", SHARDS) == k else 0), ran.stdout + ran.stderr
    merge = run_cli("report", "merge", *(tmp_path / f"verify-{k}.json" for k in range(SHARDS)), "--out", tmp_path / "verify.json")
    assert merge.returncode == 1, merge.stderr
    assert merge.stdout.startswith(f"verify of s3://{LISTED} at {store.endpoint}: 100 key(s) (4 shards merged")
    assert re.search(r"present and matching +99\n", merge.stdout) and "missing in the store: k1950: " in merge.stdout
    merged = json.loads((tmp_path / "verify.json").read_text())
    assert merged["counts"] == {"ok": 99, "missing": 1, "differs": 0, "unchecked": 0, "origin-404": 0, "tombstoned": 0,
                                "proxy-pass": 0, "redirected": 0}
