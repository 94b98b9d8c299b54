"""The Prometheus endpoint during a run : values move as requests go through."""

from __future__ import annotations

import requests

from tests.support import http_get, metered_proxy, scrape, wait_for

BUCKET = "metrics-bucket"


def test_metrics_move_as_requests_go_through(tmp_path, store, origin, unique):
    proxy, port = metered_proxy(tmp_path, store, BUCKET, origin.base)
    try:
        before = scrape(port)
        key = f"ok/{unique}"
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200  # a miss
        wait_for(lambda: scrape(port).get(("backorigin_writebacks_total", (("outcome", "stored"),))) == 1)
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200  # a hit
        assert http_get(f"{proxy.url}/{BUCKET}/error500/{unique}")[0] == 424
        assert requests.delete(f"{proxy.url}/{BUCKET}/gone/{unique}").status_code == 204
        after = scrape(port)
    finally:
        proxy.stop()
    assert after[("backorigin_requests_total", (("decision", "mirror"), ("outcome", "mirrored")))] == 1
    assert after[("backorigin_requests_total", (("decision", "mirror"), ("outcome", "mirror-failed")))] == 1
    assert after[("backorigin_rule_gets_total", (("served_by", "origin"),))] == 1
    assert after[("backorigin_rule_gets_total", (("served_by", "store"),))] == 1
    assert after[("backorigin_store_share", ())] == 0.5
    assert after[("backorigin_origin_fetch_seconds_count", ())] == 2
    assert after[("backorigin_origin_errors_total", (("kind", "status_5xx"),))] == 1
    assert after[("backorigin_mirrored_bytes_total", ())] > 0
    assert after[("backorigin_writebacks_pending", ())] == 0
    assert after[("backorigin_tombstones", ())] == 1
    assert after[("backorigin_spool_bytes", ())] >= 0
    assert ("backorigin_requests_total", (("decision", "mirror"), ("outcome", "mirrored"))) not in before
