"""Scenario 10's states, read back by the addon's own readers: a state the proxy would not read as
meant (tombstones not in its index, write-backs it does not resume, rules it refuses or reads for
another bucket) would make the curves measure nothing. Also its axes, its table and its plot.
Nothing here is timed."""

from __future__ import annotations

from pathlib import Path

from backorigin.rules.parsing import load_rules
from backorigin.tombstones.journal import LocalTombstones
from backorigin.writeback.spool import Spool
from bench.scenarios.state import build
from bench.scenarios.state.curves import AXES, DESCRIPTORS_BESIDES, three_points, within_descriptors
from bench.scenarios.state.measure import spread
from bench.scenarios.state.tables import curves_table, draw

ORIGIN, LISTED = "http://127.0.0.1:9/", "http://127.0.0.1:8/bench-listed/"


def test_the_tombstones_are_the_proxys_own_and_hide_one_listed_key_in_a_hundred(tmp_path: Path) -> None:
    build.write_tombstones(tmp_path, "bench", 5000)
    tombstones = LocalTombstones(tmp_path / "tombstones")
    assert tombstones.count() == 5000
    assert tombstones.keys("bench", "listed/") == [build.listed_key(i) for i in range(0, build.LISTED_KEYS, 100)]
    assert ("bench", "gone/0004979") in tombstones and ("bench", "listed/00001") not in tombstones


def test_the_pending_write_backs_are_resumed_as_the_spool_wrote_them(tmp_path: Path) -> None:
    build.write_pending(tmp_path / "spool", "http://127.0.0.1:7", "bench", 300)
    resumed = list(Spool(tmp_path / "spool").pending())
    assert len(resumed) == build.pending_in(tmp_path / "spool") == 300
    manifest, upload = resumed[0]
    assert (upload.endpoint, upload.bucket, upload.size) == ("http://127.0.0.1:7", "bench", len(build.PENDING_BODY))
    assert upload.etag and manifest.with_suffix(".body").read_bytes() == build.PENDING_BODY
    assert {u.key for _, u in resumed} == {f"pending/{i:07d}" for i in range(300)}


def test_every_bucket_has_twenty_rules_and_the_pattern_covers_the_requests_bucket(tmp_path: Path) -> None:
    own = load_rules(build.write_bucket_rules(tmp_path / "own.json", "bench", 50, ORIGIN, LISTED), max_rules=20)
    pattern = load_rules(build.write_bucket_rules(tmp_path / "p.json", "bench", 50, ORIGIN, LISTED, pattern=True),
                         max_rules=20)
    assert len(list(own.entries())) == len(list(pattern.entries())) == 50
    assert own.entry_for("bench") == "bench" and pattern.entry_for("bench") == "bench*"
    for book in (own, pattern):
        rules = book.rules_for("bench")
        assert len(rules) == build.RULES_PER_BUCKET


def test_quick_axes_keep_their_ends_and_the_pending_axis_fits_the_descriptors() -> None:
    for axis in AXES:
        quick = three_points(axis)
        assert quick.points == (axis.points[0], axis.points[len(axis.points) // 2], axis.points[-1])
    (wanted,) = [axis for axis in AXES if axis.name == "pending"]
    fitted = within_descriptors(wanted)
    for point, asked in zip(fitted.points, wanted.points, strict=True):
        assert point.size + DESCRIPTORS_BESIDES <= build.descriptors_allowed(asked.size + DESCRIPTORS_BESIDES)
        assert (point.size < asked.size) == (f"not {asked.size:,}" in point.label)  # a cut point says so


def test_the_table_and_the_plot_show_every_point(tmp_path: Path) -> None:
    cost = {"cpu_ms": 2.0, "p50_ms": 10.0}
    found = {"points": ["0", "1,000"], "sizes": [0, 1000], "pattern": [False, False],
             "costs": {"hit": [cost, {"cpu_ms": 2.5, "p50_ms": 11.0}]}}
    table = curves_table({"tombstones": found}, {"tombstones": "tombstones"})
    assert "| tombstones: 0 / 1,000 | hit | 2.00 / 2.50 | 1.25 | 10.0 / 11.0 | 1.10 |" in table
    draw({"tombstones": found}, {"tombstones": "tombstones"}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert spread([2.0, 2.5]) == 1.25
