"""Protecting the old site at cut-over (issue 22): origin 404s remembered, at most N fetches at once
per origin host, and a circuit breaker, through mitmdump against the real store and a scripted
origin of each test's own, counted in the origin's own log and read back from the metrics."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from backorigin.tools.embedded_store import free_ports
from tests.origin_server import ScriptedOrigin, body_for
from tests.support import Mitmdump, http_get, mirror_rule, wait_for, wait_stored, write_rules

BUCKET = "guarded-bucket"


@pytest.fixture(scope="module", autouse=True)
def bucket(store):
    store.create_buckets([BUCKET])


@pytest.fixture
def own_origin():
    origin = ScriptedOrigin().start()
    yield origin
    origin.stop()


def start_proxy(tmp_path, store, origin: ScriptedOrigin, **options: str) -> Mitmdump:
    rules = write_rules(tmp_path / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")]})
    return Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path / "proxy",
                    {"backorigin_metrics_port": str(free_ports(1)[0]), "backorigin_origin_timeout": "10", **options}).start()


def metric(proxy: Mitmdump, line_start: str) -> float:
    port = proxy.options["backorigin_metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(line_start + " ")]
    assert len(values) <= 1, values
    return float(values[0]) if values else 0.0  # a labelled series appears with its first value


def test_a_key_the_origin_lacks_costs_it_one_request_per_ttl(tmp_path, store, s3, own_origin, unique):
    """(The TTL itself runs on a clock in tests/unit/test_miss_guard.py.)"""
    proxy = start_proxy(tmp_path, store, own_origin, backorigin_origin_404_ttl="600")
    key = f"missing/{unique}"
    try:
        for _ in range(200):
            status, _, body = http_get(f"{proxy.url}/{BUCKET}/{key}")
            assert status == 404 and b"<Code>NoSuchKey</Code>" in body
        assert own_origin.count("GET", key) == 1
        assert metric(proxy, "backorigin_origin_404_remembered_hits_total") == 199
        # a write through the proxy forgets it: once the object is gone again (deleted on the store
        # itself, which leaves no tombstone), the next miss asks the origin
        assert requests.put(f"{proxy.url}/{BUCKET}/{key}", data=b"written").status_code == 200
        s3.delete_object(Bucket=BUCKET, Key=key)
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 404
        assert own_origin.count("GET", key) == 2
    finally:
        proxy.stop()


def test_with_a_ttl_of_zero_every_miss_asks_the_origin(tmp_path, store, own_origin, unique):
    proxy = start_proxy(tmp_path, store, own_origin, backorigin_origin_404_ttl="0")
    try:
        for _ in range(3):
            assert http_get(f"{proxy.url}/{BUCKET}/missing/{unique}")[0] == 404
        assert own_origin.count("GET", unique) == 3
    finally:
        proxy.stop()


def test_no_more_than_the_limit_of_fetches_reach_the_origin_at_once(tmp_path, store, s3, own_origin, unique):
    proxy = start_proxy(tmp_path, store, own_origin, backorigin_origin_concurrency="8", backorigin_origin_queue="200")
    keys = [f"gate/{unique}-{i}" for i in range(100)]
    try:
        with ThreadPoolExecutor(100) as pool:
            answers = [pool.submit(http_get, f"{proxy.url}/{BUCKET}/{key}") for key in keys]
            waiting = f'backorigin_origin_fetches_waiting{{host="127.0.0.1:{own_origin.port}"}}'
            # eight hold a slot (their fetch may still be on its way); the others wait in the proxy
            wait_for(lambda: metric(proxy, waiting) == 92 and own_origin.in_flight == 8, within=60)
            assert len(own_origin.requests_for(unique)) == 8
            own_origin.gate.set()
            results = [answer.result(timeout=120) for answer in answers]
        assert [r[0] for r in results] == [200] * 100
        assert all(body == body_for(f"/dir1/{key}") for (_, _, body), key in zip(results, keys, strict=True))
        assert own_origin.most_in_flight == 8 and len(own_origin.requests_for(unique)) == 100
        assert metric(proxy, "backorigin_origin_fetches_queued_total") == 92
        wait_stored(s3, BUCKET, keys[-1])
    finally:
        own_origin.gate.set()
        proxy.stop()


def test_past_the_queue_a_miss_gets_503_slowdown_which_clients_retry(tmp_path, store, own_origin, unique):
    proxy = start_proxy(tmp_path, store, own_origin, backorigin_origin_concurrency="1", backorigin_origin_queue="1")
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(http_get, f"{proxy.url}/{BUCKET}/gate/{unique}-1")
            wait_for(lambda: own_origin.in_flight == 1)
            queued = pool.submit(http_get, f"{proxy.url}/{BUCKET}/gate/{unique}-2")
            wait_for(lambda: metric(proxy, f'backorigin_origin_fetches_waiting{{host="127.0.0.1:{own_origin.port}"}}') == 1)
            status, headers, body = http_get(f"{proxy.url}/{BUCKET}/gate/{unique}-3")
            assert status == 503 and headers["retry-after"] == "1" and b"<Code>SlowDown</Code>" in body
            own_origin.gate.set()
            assert first.result(timeout=30)[0] == queued.result(timeout=30)[0] == 200
        assert http_get(f"{proxy.url}/{BUCKET}/gate/{unique}-3")[0] == 200  # the retry
        assert metric(proxy, "backorigin_origin_fetches_refused_total") == 1
    finally:
        own_origin.gate.set()
        proxy.stop()


def test_a_failing_origin_opens_its_circuit_and_one_request_tests_it_after_the_cooldown(tmp_path, store, own_origin, unique):
    proxy = start_proxy(tmp_path, store, own_origin, backorigin_breaker_failures="3", backorigin_breaker_cooldown="2")
    host = f'backorigin_origin_circuit{{bucket="{BUCKET}",client="anonymous",host="127.0.0.1:{own_origin.port}"}}'
    own_origin.forced = "error500"
    try:
        for i in range(3):
            assert http_get(f"{proxy.url}/{BUCKET}/a/{unique}-{i}")[0] == 424
        assert len(own_origin.requests_for(unique)) == 3 and metric(proxy, host) == 2  # open
        for i in range(3, 10):
            status, _, body = http_get(f"{proxy.url}/{BUCKET}/a/{unique}-{i}")
            assert status == 424 and b"the origin kept failing" in body
        assert len(own_origin.requests_for(unique)) == 3  # failed at once: the origin saw nothing
        assert metric(proxy, "backorigin_origin_failed_fast_total") == 7
        own_origin.forced = None  # healthy again: misses fail at once until the cooldown is over, then one tests it
        wait_for(lambda: http_get(f"{proxy.url}/{BUCKET}/a/{unique}-test")[0] == 200, within=30)  # the one test fetch
        assert len(own_origin.requests_for(unique)) == 4 and metric(proxy, host) == 0  # closed
        for i in range(10, 15):
            assert http_get(f"{proxy.url}/{BUCKET}/a/{unique}-{i}")[0] == 200
        assert "circuit open -> half-open" in proxy.log() and "circuit half-open -> closed" in proxy.log()
    finally:
        proxy.stop()


def test_an_open_circuit_sends_misses_to_the_secondary_origin(tmp_path, store, own_origin, unique):
    secondary = ScriptedOrigin().start()
    rules = write_rules(tmp_path / "rules.json", {BUCKET: [
        mirror_rule(1, f"{own_origin.base}/dir1/", MirrorURLSlave=f"{secondary.base}/dir1/")]})
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path / "proxy",
                     {"backorigin_breaker_failures": "2", "backorigin_breaker_cooldown": "60"}).start()
    own_origin.forced = "reset"
    try:
        for i in range(6):
            status, _, body = http_get(f"{proxy.url}/{BUCKET}/b/{unique}-{i}")
            assert (status, body) == (200, body_for(f"/dir1/b/{unique}-{i}"))
        assert len(own_origin.requests_for(unique)) == 2  # then the primary is left alone
        assert len(secondary.requests_for(unique)) == 6
    finally:
        proxy.stop()
        secondary.stop()
