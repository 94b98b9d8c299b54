"""docs/dashboard.json, the Grafana dashboard: every metric its queries name is one a real proxy
serves (scraped after some traffic: a miss, a hit, an origin 404 and 500, a delete), so a renamed
metric cannot leave a panel empty unnoticed."""

from __future__ import annotations

import json
import re

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, http_get, metered_proxy, wait_for

DASHBOARD = REPO / "docs" / "dashboard.json"
BUCKET = "dashboard-bucket"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "summary": ("_count", "_sum")}


def dashboard_metrics() -> set[str]:
    """The metric names in the dashboard's queries (every one of ours starts with backorigin_)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert exprs and all(exprs)
    return {name for expr in exprs for name in re.findall(r"\bbackorigin_[a-z0-9_]+", expr)}


def served(port: int) -> set[str]:
    """The sample names the endpoint serves, and those a family without samples yet would have."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def test_every_metric_the_dashboard_names_is_served(tmp_path, store, origin, unique):
    proxy, port = metered_proxy(tmp_path, store, BUCKET, origin.base)
    try:
        key = f"ok/{unique}"
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200  # a miss, mirrored
        wait_for(lambda: "backorigin_writebacks_total" in served(port))
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200  # a hit
        assert http_get(f"{proxy.url}/{BUCKET}/missing/{unique}")[0] == 404
        assert http_get(f"{proxy.url}/{BUCKET}/error500/{unique}")[0] == 424
        assert requests.delete(f"{proxy.url}/{BUCKET}/gone/{unique}").status_code == 204
        names = served(port)
    finally:
        proxy.stop()
    named = dashboard_metrics()
    assert len(named) >= 15
    assert sorted(named - names) == []
