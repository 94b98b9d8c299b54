"""The sweep's report, and `backorigin report merge`: the shards' reports add up to the report of
one process over the same keys, and reports that are not one sweep's shards are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from backorigin.tools.report import Finished, Report, ReportError, merge_reports, read_report, run_merge, write_report
from backorigin.tools.shards import Shard, shard_of

RESULTS = [Finished(f"k{n:03d}", "copied", size=n) for n in range(40)] + [
    Finished("present", "already-present"), Finished("gone", "origin-404", "http://o/gone answered 404"),
    Finished("deleted", "tombstoned"), Finished("broken", "failed", "http://o/broken: the origin answered 500"),
]


def single_run(results: list[Finished], shard: Shard | None = None, seconds: float = 2.0) -> Report:
    mine = [finished for finished in results if shard is None or shard.owns(finished.key)]
    report = Report("backfill", "photos", "http://store:8333", keys=len(mine), shard=shard, seconds=seconds)
    for finished in mine:
        report.add(finished)
    return report


def shard_files(tmp_path: Path, count: int, results: list[Finished] = RESULTS) -> list[Path]:
    paths = []
    for index in range(count):
        paths.append(tmp_path / f"shard-{index}.json")
        write_report(single_run(results, Shard(index, count), seconds=1.0 + index), paths[-1])
    return paths


def test_shard_reports_merge_into_the_single_runs(tmp_path, capsys):
    merged = merge_reports([(path, read_report(path)) for path in shard_files(tmp_path, 4)])
    single = single_run(RESULTS)
    for name in ("command", "bucket", "store", "keys", "bytes", "resumed", "unfinished", "ok"):
        assert getattr(merged, name) == getattr(single, name), name
    assert merged.counts == single.counts and merged.problems == single.problems
    assert merged.seconds == 4.0 and merged.merged_shards == 4 and merged.shard is None
    as_json = merged.as_json()
    assert as_json["shard"] is None and as_json["merged_shards"] == 4
    assert {k: v for k, v in as_json.items() if k not in ("seconds", "merged_shards")} == \
        {k: v for k, v in single.as_json().items() if k != "seconds"}


def test_report_merge_prints_the_merged_report_and_writes_its_json(tmp_path, capsys):
    paths = shard_files(tmp_path, 3)
    capsys.readouterr()
    assert run_merge(paths, tmp_path / "merged.json") == 1  # one key failed
    out = capsys.readouterr().out
    assert out.startswith("backfill of s3://photos at http://store:8333: 44 key(s) (3 shards merged; the longest took 3.0s)")
    assert re.search(r"copied +40 ", out) and "failed: broken: http://o/broken: the origin answered 500" in out
    written = json.loads((tmp_path / "merged.json").read_text())
    assert written["counts"]["copied"] == 40 and written["bytes_copied"] == sum(range(40)) and written["ok"] is False

    fine = [finished for finished in RESULTS if finished.result != "failed"]
    assert run_merge(shard_files(tmp_path, 2, fine), None) == 0


def test_a_shards_report_says_which_shard_it_is(tmp_path):
    path = tmp_path / "r.json"
    write_report(single_run(RESULTS, Shard(2, 4)), path)
    written = json.loads(path.read_text())
    assert written["shard"] == "2/4" and written["keys"] == sum(1 for f in RESULTS if shard_of(f.key, 4) == 2)
    assert ", shard 2/4: " in single_run(RESULTS, Shard(2, 4)).text().splitlines()[0]
    write_report(single_run(RESULTS), path)
    assert json.loads(path.read_text())["shard"] is None


def rewrite(path: Path, **changes) -> Path:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, says", [
    (lambda paths: paths[:1] + paths[2:], "shard(s) 1/4 missing: a report from each of the 4 shards is needed"),
    (lambda paths: paths[:2], "shard(s) 2/4, 3/4 missing"),
    (lambda paths: [*paths, paths[1]], "shard 1/4 twice: "),
    (lambda paths: [rewrite(paths[0], bucket="other"), *paths[1:]], "bucket 'photos', but "),
    (lambda paths: [*paths[:3], rewrite(paths[3], store="http://elsewhere")], "store 'http://elsewhere', but "),
    (lambda paths: [*paths[:3], rewrite(paths[3], command="verify")], "results a verify report does not have"),
    (lambda paths: [*paths[:3], rewrite(paths[3], shard="3/8")], "shard 3/8, but "),
    (lambda paths: [*paths[:3], rewrite(paths[3], shard=None)], "not a shard's report"),
    (lambda paths: [*paths[:3], rewrite(paths[3], counts=[])], "not a backfill or verify report"),
    (lambda paths: [*paths[:3], paths[3].with_name("absent.json")], "cannot read the report"),
])
def test_reports_of_different_sweeps_or_an_incomplete_set_are_refused(tmp_path, capsys, change, says):
    paths = change(shard_files(tmp_path, 4))
    capsys.readouterr()
    assert run_merge(paths, tmp_path / "merged.json") == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "merged.json").exists()


def test_merge_refuses_a_report_of_no_shard_given_directly():
    with pytest.raises(ReportError, match="not a shard's report"):
        merge_reports([(Path("a.json"), single_run(RESULTS))])
