"""The write-back worker: uploads run in a process of their own, which the addon starts,
restarts and stops; the spool stays the only queue, so killing either process loses nothing.
Real mitmdump, real SeaweedFS, scripted origin."""

from __future__ import annotations

import os
import signal

import pytest

from tests.origin_server import body_for
from tests.support import Mitmdump, Relay, http_get, mirror_rule, running, wait_for, wait_stored, write_back_worker, write_rules

BUCKET = "worker-bucket"


@pytest.fixture(scope="module")
def worker_rules(tmp_path_factory, store, origin):
    store.create_buckets([BUCKET])
    return write_rules(tmp_path_factory.mktemp("worker") / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")]})


def test_uploads_run_in_the_worker_not_in_the_proxy(tmp_path, store, s3, worker_rules, unique):
    proxy = Mitmdump(f"reverse:{store.endpoint}", worker_rules, tmp_path).start()
    key = f"ok/{unique}"
    try:
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[2] == body_for(f"/dir1/{key}")
        wait_stored(s3, BUCKET, key)
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_for(f"/dir1/{key}")
        worker = write_back_worker(proxy.pid)
    finally:
        assert proxy.stop() == 0
    # the upload was the worker's: its log lines, relayed into mitmproxy's log, say so
    assert f"write-back worker: write-back stored s3://{BUCKET}/{key} " in proxy.log()
    assert not running(worker)  # stopped with the proxy


def test_kill_9_of_the_worker_mid_upload_loses_nothing(tmp_path, store, s3, origin, worker_rules, unique):
    """Uploads are held by a slow relay; the worker is killed while they are under way; the
    addon starts another, which resumes the spool: every object lands, fetched once."""
    slow_store = Relay(store.s3_port, delay=2.0)
    proxy = Mitmdump(f"reverse:{store.endpoint}", worker_rules, tmp_path,
                     {"backorigin_s3_endpoint": f"http://127.0.0.1:{slow_store.port}"}).start()
    keys = [f"ok/{unique}-{i}" for i in range(4)]
    try:
        for key in keys:
            assert http_get(f"{proxy.url}/{BUCKET}/{key}")[2] == body_for(f"/dir1/{key}")
        first = write_back_worker(proxy.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "the write-back worker exited with status -9; starting another" in proxy.log())
        second = wait_for(lambda: (pid := write_back_worker(proxy.pid)) != first and pid)
        for key in keys:
            wait_stored(s3, BUCKET, key, within=30)
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_for(f"/dir1/{key}")
        assert "resuming 4 spooled write-back(s)" in proxy.log()
        for key in keys:  # answered from the spool or the store since: the origin saw one GET
            assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200
            assert len(origin.requests_for(key)) == 1
    finally:
        assert proxy.stop() == 0
        slow_store.close()
    assert not running(second)
    assert list(proxy.spool.glob("*.json")) == []


def test_the_worker_stops_when_the_proxy_is_killed(tmp_path, store, s3, worker_rules, unique):
    """kill -9 of mitmdump: the worker sees its input end and exits (no orphan); what it had
    not stored stays spooled for the next start."""
    stuck_store = Relay(store.s3_port, delay=600)
    spool = tmp_path / "spool"
    proxy = Mitmdump(f"reverse:{store.endpoint}", worker_rules, tmp_path,
                     {"backorigin_s3_endpoint": f"http://127.0.0.1:{stuck_store.port}", "backorigin_spool_dir": str(spool)}).start()
    key = f"ok/{unique}"
    try:
        assert http_get(f"{proxy.url}/{BUCKET}/{key}")[0] == 200
        worker = write_back_worker(proxy.pid)
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGKILL)
        proxy.process.wait()
        wait_for(lambda: not running(worker), within=10)
    finally:
        stuck_store.close()
    assert len(list(spool.glob("*.json"))) == 1
    again = Mitmdump(f"reverse:{store.endpoint}", worker_rules, tmp_path / "again",
                     {"backorigin_spool_dir": str(spool), "backorigin_s3_endpoint": store.endpoint}).start()
    try:
        wait_stored(s3, BUCKET, key)
    finally:
        assert again.stop() == 0
