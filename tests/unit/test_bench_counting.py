"""The bench's pure parts behind the cold-hit and large-hit rows: the counting relay's log lines
(one store request per upstream attempt), reading the log from a mark, and the table printing a
target beside every row, by scenario number. Nothing here is timed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from bench.report import NO_TARGET, Report
from bench.scenarios.largehit import _stored_huge
from bench.services.nginx import StoreLog, StoreRequest, counting_relay_config
from bench.stack import GiB


def test_a_log_line_is_one_store_request_per_upstream_attempt() -> None:
    one = StoreRequest.parse('GET /bench/cold/get-c1-1addon-7 206 "206" "bytes=0-0"')
    assert one == StoreRequest("GET", "/bench/cold/get-c1-1addon-7", 206, 1, "bytes=0-0")
    retried = StoreRequest.parse('HEAD /bench/k 200 "502, 200" "-"')
    assert retried is not None and retried.attempts == 2 and retried.range == ""
    unsent = StoreRequest.parse('GET /bench/k 499 "-" "-"')  # the client left before nginx asked the store
    assert unsent is not None and unsent.attempts == 0
    assert StoreRequest.parse("garbage") is None


def test_the_log_is_read_from_its_mark(tmp_path: Path) -> None:
    path = tmp_path / "store-requests.log"
    store_log = StoreLog(path)
    store_log.mark()  # no file yet
    assert store_log.since_mark() == []
    path.write_text('GET /bench/warm 200 "200" "-"\n')
    store_log.mark()
    with open(path, "a") as f:
        f.write('GET /bench/a 206 "206" "bytes=0-0"\nGET /bench/a 200 "200" "-"\n')
    assert [(r.target, r.status) for r in store_log.since_mark()] == [("/bench/a", 206), ("/bench/a", 200)]


def test_the_relay_logs_every_request_and_passes_it_through_unchanged() -> None:
    config = counting_relay_config(9000, 9001)
    assert "listen 127.0.0.1:9000" in config and "server 127.0.0.1:9001" in config
    assert "$upstream_status" in config and "proxy_set_header Host $http_host" in config
    assert "proxy_buffering off" in config and "client_max_body_size 0" in config


def test_every_row_has_a_target_and_rows_are_ordered_by_scenario() -> None:
    report = Report()
    report.add("9", "large hits", "throughput", "0.95", "≥ 0.90", True)
    report.add("7", "reference", "nginx ÷ plain", "3.1×")
    report.add("8", "cold hits", "store requests per GET", "2.00 (1.00)", "1.00", False)
    lines = report.table().splitlines()[2:]
    assert [line.split(" | ")[1] for line in lines] == ["reference", "cold hits", "large hits"]
    assert lines[0].endswith(f"| {NO_TARGET} |  |")
    assert lines[1].endswith("| 1.00 | **MISSED** |") and lines[2].endswith("| ≥ 0.90 | met |")


def test_large_hits_read_the_memory_scenarios_object_when_it_landed_whole() -> None:
    report = Report()
    report.raw["memory_1gib"] = {"eight": {"stored_bytes": GiB - 1, "wrong": []},
                                 "single": {"stored_bytes": GiB, "wrong": []}}
    assert _stored_huge(cast(Any, None), report) == "huge/single"  # the store is not asked: no upload
