"""`backorigin backfill` and `backorigin verify` against real components: the session's
SeaweedFS store, the scripted HTTP origin, and a second SeaweedFS with SigV4 on as an S3
origin holding 2,000 keys (conftest's s3_origin)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from backorigin.tombstones.tombstones import LocalTombstones
from backorigin.tools import cli
from backorigin.tools.embedded_store import free_ports
from tests.origin_server import body_for, sized_body
from tests.support import BACKORIGIN, Mitmdump, http_get, mirror_rule, wait_for, write_rules
from tests.sweep_support import ORIGIN_KEYS, origin_body, s3_origin_rule

HTTP_BUCKET = "backfill-http"
# python -c PEAK_RSS OUT.json COMMAND...: runs COMMAND as its child, writes [exit status, peak RSS in KiB]
PEAK_RSS = (
    "import json, os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]))\n"
)
S3_BUCKET = "backfill-s3"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def rules(tmp_path_factory, store, origin, s3_origin):
    store.create_buckets([HTTP_BUCKET, S3_BUCKET])
    return write_rules(tmp_path_factory.mktemp("backfill-rules") / "rules.json", {
        HTTP_BUCKET: [
            mirror_rule(1, f"{origin.base}/dir1/", "pp/", MirrorProxyPass=True),
            mirror_rule(2, f"{origin.base}/dir1/"),
        ],
        S3_BUCKET: [s3_origin_rule(s3_origin)],
    })


def command(rules: Path, store, bucket: str, state: Path, *more: str, name: str = "backfill") -> list[str]:
    argv = [name, "--rules", str(rules), "--store", store.endpoint, "--bucket", bucket, *more]
    return argv + ["--state", str(state)] if name == "backfill" else argv


def write_keys(path: Path, keys: list[str]) -> Path:
    path.write_text("".join(f"{key}\n" for key in keys))
    return path


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


def journal_keys(state: Path) -> set[str]:
    keys = set()
    for line in (state / "journal.jsonl").read_text().splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except json.JSONDecodeError:
            pass  # the line the kill cut short
    return keys


def test_backfill_from_a_key_list_copies_what_is_missing_at_bounded_memory(rules, store, s3, origin, unique, tmp_path):
    ok = [f"{unique}/a{n}.txt" for n in range(3)]
    big = [f"{unique}/sized/{100 * MIB}/big1.bin", f"{unique}/sized/{100 * MIB}/big2.chunked"]
    present, missing, broken = f"{unique}/present.txt", f"{unique}/missing/gone.txt", f"{unique}/error500/x.txt"
    proxy_pass, tombstoned = f"pp/{unique}/x.txt", f"{unique}/deleted.txt"
    s3.put_object(Bucket=HTTP_BUCKET, Key=present, Body=b"already here")
    LocalTombstones(tmp_path / "tombstones").add(HTTP_BUCKET, tombstoned)
    keys = write_keys(tmp_path / "keys.txt", [*ok, *big, present, missing, broken, proxy_pass, tombstoned])

    argv = command(rules, store, HTTP_BUCKET, tmp_path / "state", "--keys", str(keys), "--concurrency", "4",
                   "--tombstones", str(tmp_path / "tombstones"), "--report", str(tmp_path / "report.json"))
    # measured from a small launcher: a process forked from this (large) test process would carry its
    # peak RSS across exec, and wait4 would report that instead of the backfill's own
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        process = subprocess.Popen([sys.executable, "-c", PEAK_RSS, str(tmp_path / "rss.json"), BACKORIGIN, *argv],
                                   stdout=out, stderr=err, start_new_session=True)
    watchdog = threading.Timer(120, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    process.wait()
    watchdog.cancel()
    returncode, peak_rss_kib = json.loads((tmp_path / "rss.json").read_text())
    stdout = (tmp_path / "out").read_text()
    assert returncode == 1, (tmp_path / "err").read_text()  # one key failed

    report = report_of(tmp_path / "report.json")
    assert report["unfinished"] == 0
    assert report["counts"] == {"copied": 5, "already-present": 1, "origin-404": 1, "tombstoned": 1, "proxy-pass": 1,
                                "redirected": 0, "failed": 1}
    assert [(p["key"], p["result"]) for p in report["problems"]] == [(broken, "failed")]
    assert "500" in report["problems"][0]["reason"]
    assert report["bytes_copied"] == 200 * MIB + sum(len(body_for(f"/dir1/{key}")) for key in ok)
    assert f"failed: {broken}:" in stdout and "not stored (proxy pass)" in stdout

    for key in ok:
        stored = s3.get_object(Bucket=HTTP_BUCKET, Key=key)
        assert stored["Body"].read() == body_for(f"/dir1/{key}")
        assert stored["ContentType"] == "text/plain; charset=utf-8"
        assert stored["Metadata"]["backorigin-origin-url"] == f"{origin.base}/dir1/{key}"
        assert "backorigin-last-modified" in stored["Metadata"]
    for key in big:
        stored = s3.get_object(Bucket=HTTP_BUCKET, Key=key)
        digest, expected = hashlib.md5(), hashlib.md5()
        for chunk in stored["Body"].iter_chunks(MIB):
            digest.update(chunk)
        for chunk in sized_body(100 * MIB):
            expected.update(chunk)
        assert digest.hexdigest() == expected.hexdigest()
    assert s3.get_object(Bucket=HTTP_BUCKET, Key=present)["Body"].read() == b"already here"  # create-only
    for key in (missing, broken, proxy_pass, tombstoned):
        with pytest.raises(ClientError):
            s3.head_object(Bucket=HTTP_BUCKET, Key=key)
    assert origin.count("GET", tombstoned) == 0 and origin.count("GET", present) == 0
    # two 100 MiB bodies went through a file, not memory
    assert peak_rss_kib < 400 * 1024, f"peak RSS {peak_rss_kib} KiB"
    print(f"backfill with two 100 MiB objects: peak RSS {peak_rss_kib // 1024} MiB")


def test_backfill_from_the_miss_ledger(rules, store, s3, origin, unique, tmp_path, capsys):
    entries = [
        {"bucket": HTTP_BUCKET, "key": f"{unique}/one.txt", "action": "mirror", "outcome": "mirrored"},
        {"bucket": HTTP_BUCKET, "key": f"{unique}/two.txt", "action": "mirror", "outcome": "origin-error"},
        {"bucket": HTTP_BUCKET, "key": f"{unique}/one.txt", "action": "mirror", "outcome": "mirrored"},
        {"bucket": HTTP_BUCKET, "key": f"{unique}/gone.txt", "action": "mirror", "outcome": "origin-404"},
        {"bucket": HTTP_BUCKET, "key": f"{unique}/moved.txt", "action": "redirect", "outcome": "redirected"},
        {"bucket": "another-bucket", "key": f"{unique}/other.txt", "action": "mirror", "outcome": "mirrored"},
    ]
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    report = tmp_path / "report.json"
    # a ledger that does not say where its proxy kept tombstones (before 0.2.0): refused without --tombstones
    assert cli.main(command(rules, store, HTTP_BUCKET, tmp_path / "state", "--ledger", str(ledger))) == 2
    assert "line 1 does not say where its proxy kept tombstones" in capsys.readouterr().err
    status = cli.main(command(rules, store, HTTP_BUCKET, tmp_path / "state", "--ledger", str(ledger), "--report", str(report),
                              "--tombstones", "none"))
    assert status == 0
    assert report_of(report)["counts"]["copied"] == 2 and report_of(report)["keys"] == 2
    assert s3.get_object(Bucket=HTTP_BUCKET, Key=f"{unique}/two.txt")["Body"].read() == body_for(f"/dir1/{unique}/two.txt")
    assert origin.count("GET", f"{unique}/one.txt") == 1
    for skipped in ("gone.txt", "moved.txt", "other.txt"):
        assert origin.count("GET", f"{unique}/{skipped}") == 0
    assert "copied" in capsys.readouterr().out


def test_a_ledger_names_its_proxys_tombstones_so_deleted_keys_stay_deleted(rules, store, s3, origin, unique, tmp_path, capsys):
    """A proxy writes the ledger; a key it served without storing (MirrorProxyPass) is then deleted
    through it. ledger-missing and backfill --ledger leave that key out with no --tombstones."""
    served = write_rules(tmp_path / "proxy-rules.json", {HTTP_BUCKET: [mirror_rule(1, f"{origin.base}/dir1/", MirrorProxyPass=True)]})
    ledger = tmp_path / "misses.jsonl"
    proxy = Mitmdump(f"reverse:{store.endpoint}", served, tmp_path / "proxy", {"backorigin_ledger": str(ledger)}).start()
    try:
        for name in ("kept.txt", "deleted.txt"):
            assert http_get(f"{proxy.url}/{HTTP_BUCKET}/{unique}/{name}")[0] == 200
        request = urllib.request.Request(f"{proxy.url}/{HTTP_BUCKET}/{unique}/deleted.txt", method="DELETE")
        assert urllib.request.urlopen(request, timeout=30).status == 204
    finally:
        assert proxy.stop() == 0
    assert {json.loads(line)["tombstones"] for line in ledger.read_text().splitlines()} == {str(proxy.spool / "tombstones")}

    capsys.readouterr()
    assert cli.main(["ledger-missing", str(ledger), "--store", store.endpoint]) == 0
    out, err = capsys.readouterr()
    assert out == f"s3://{HTTP_BUCKET}/{unique}/kept.txt\n"
    assert err == "1 key(s) still missing; 1 deleted through the proxy left out\n"

    report = tmp_path / "report.json"
    assert cli.main(command(rules, store, HTTP_BUCKET, tmp_path / "state", "--ledger", str(ledger), "--report", str(report))) == 0
    assert (report_of(report)["counts"]["copied"], report_of(report)["counts"]["tombstoned"]) == (1, 1)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=HTTP_BUCKET, Key=f"{unique}/deleted.txt")


def test_keys_under_a_redirect_rule_are_skipped_not_failed(store, origin, unique, tmp_path, capsys):
    redirects = write_rules(tmp_path / "rules.json", {HTTP_BUCKET: [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": f"{unique}/moved/"},
         "Redirect": {"RedirectType": "External", "HostName": "elsewhere.example.com"}},
        mirror_rule(2, f"{origin.base}/dir1/")]})
    keys = write_keys(tmp_path / "keys.txt", [f"{unique}/moved/a.txt", f"{unique}/moved/b.txt", f"{unique}/c.txt"])
    report = tmp_path / "report.json"
    assert cli.main(command(redirects, store, HTTP_BUCKET, tmp_path / "state", "--keys", str(keys), "--report", str(report))) == 0
    assert report_of(report)["counts"] | {"copied": 1, "redirected": 2} == report_of(report)["counts"]
    assert report_of(report)["problems"] == [] and report_of(report)["ok"]
    assert "skipped (a redirect rule)" in capsys.readouterr().out


def test_origin_listing_of_2000_keys_then_verify(rules, store, s3, s3_origin, tmp_path, capsys):
    tombstones = LocalTombstones(tmp_path / "tombstones")
    for key in ("k0007", "k1234"):
        tombstones.add(S3_BUCKET, key)
    s3.put_object(Bucket=S3_BUCKET, Key="k0001", Body=origin_body(1))  # copied earlier, by other means
    report = tmp_path / "backfill.json"
    started = time.monotonic()
    status = cli.main(command(rules, store, S3_BUCKET, tmp_path / "state", "--origin-listing", "--concurrency", "32",
                              "--tombstones", str(tmp_path / "tombstones"), "--report", str(report)))
    took = time.monotonic() - started
    assert status == 0, capsys.readouterr()
    summary = report_of(report)
    assert summary["keys"] == ORIGIN_KEYS
    assert summary["counts"] == {"copied": ORIGIN_KEYS - 3, "already-present": 1, "origin-404": 0, "tombstoned": 2,
                                 "proxy-pass": 0, "redirected": 0, "failed": 0}
    print(f"backfill of {ORIGIN_KEYS} keys from the S3 origin: {took:.1f}s")
    stored = s3.get_object(Bucket=S3_BUCKET, Key="k1999")
    assert stored["Body"].read() == origin_body(1999)
    assert stored["Metadata"]["backorigin-origin-url"] == f"{s3_origin.endpoint}/origin-bucket/data/k1999"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=S3_BUCKET, Key="k0007")

    verify = [*command(rules, store, S3_BUCKET, tmp_path, "--origin-listing", "--concurrency", "32", name="verify"),
              "--tombstones", str(tmp_path / "tombstones")]
    capsys.readouterr()
    assert cli.main([*verify, "--report", str(tmp_path / "verify.json")]) == 0, capsys.readouterr().out
    assert report_of(tmp_path / "verify.json")["counts"] == {
        "ok": ORIGIN_KEYS - 2, "missing": 0, "differs": 0, "unchecked": 0, "origin-404": 0, "tombstoned": 2, "proxy-pass": 0,
        "redirected": 0}

    s3.delete_object(Bucket=S3_BUCKET, Key="k0500")
    s3.put_object(Bucket=S3_BUCKET, Key="k0600", Body=b"not what the origin has")
    capsys.readouterr()
    # the same check over a tenth of the keys (the two changed ones among them), to keep the run short
    some = write_keys(tmp_path / "some.txt", [f"k{n:04d}" for n in range(0, ORIGIN_KEYS, 10)])
    verify = [*command(rules, store, S3_BUCKET, tmp_path, "--keys", str(some), "--concurrency", "32", name="verify"),
              "--tombstones", str(tmp_path / "tombstones")]
    assert cli.main([*verify, "--report", str(tmp_path / "verify2.json")]) == 1
    out = capsys.readouterr().out
    assert "missing in the store: k0500:" in out and "differs from the origin: k0600: size" in out
    problems = report_of(tmp_path / "verify2.json")["problems"]
    assert sorted((p["key"], p["result"]) for p in problems) == [("k0500", "missing"), ("k0600", "differs")]


def test_kill_9_then_resume_fetches_only_the_keys_in_flight_again(rules, store, s3, origin, unique, tmp_path):
    keys = [f"{unique}/k{n:04d}" for n in range(120)]
    key_list = write_keys(tmp_path / "keys.txt", keys)
    state = tmp_path / "state"
    argv = command(rules, store, HTTP_BUCKET, state, "--keys", str(key_list), "--concurrency", "4")
    first = subprocess.Popen([BACKORIGIN, *argv, "--max-rps", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = state / "journal.jsonl"
    wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 40, within=30, every=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    finished = journal_keys(state)
    assert 40 <= len(finished) < len(keys)

    report = tmp_path / "report.json"
    second = subprocess.run([BACKORIGIN, *argv, "--report", str(report)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert f"{len(finished)} of {len(keys)} key(s) finished by an earlier run" in second.stderr
    # fetched again: only keys the killed run had in flight (not finished), at most its 4 at once;
    # counted once both runs are over, so no request of the killed one still on its way is missed
    twice = {key for key in keys if origin.count("GET", key) == 2}
    assert twice <= set(keys) - finished and len(twice) <= 4
    assert all(origin.count("GET", key) in (1, 2) for key in keys)
    summary = report_of(report)
    assert summary["resumed"] == len(finished)
    assert summary["counts"]["copied"] + summary["counts"]["already-present"] == len(keys)
    for key in keys:
        assert s3.head_object(Bucket=HTTP_BUCKET, Key=key)["ContentLength"] == len(body_for(f"/dir1/{key}"))


def test_ctrl_c_reports_what_is_unfinished_and_the_same_command_continues(rules, store, s3, unique, tmp_path):
    keys = [f"{unique}/c{n:03d}" for n in range(30)]
    state, report = tmp_path / "state", tmp_path / "report.json"
    argv = [BACKORIGIN, *command(rules, store, HTTP_BUCKET, state, "--keys", str(write_keys(tmp_path / "keys.txt", keys)),
                                 "--report", str(report))]
    # Ctrl-C as at a terminal: a suite started in the background by a shell without job control
    # runs with SIGINT ignored, which a child would inherit (and rightly keep)
    first = subprocess.Popen([*argv, "--max-rps", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = state / "journal.jsonl"
    wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 5, within=30, every=0.02)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=30)
    assert first.returncode == 130, err
    assert "run the same command again to continue" in err and "not finished" in out
    interrupted = report_of(report)
    assert interrupted["ok"] is False and interrupted["unfinished"] > 0
    assert interrupted["counts"]["copied"] + interrupted["unfinished"] == len(keys)

    second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    done = report_of(report)
    assert done["ok"] is True and done["unfinished"] == 0
    assert done["counts"]["copied"] + done["counts"]["already-present"] == len(keys)
    for key in keys:
        s3.head_object(Bucket=HTTP_BUCKET, Key=key)


class OriginWatch:
    """When each request for paths containing `fragment` reached the origin (time.time(), polled
    every 5 ms), so rates are measured at the origin, without the command's start-up."""

    def __init__(self, origin, fragment: str) -> None:
        self.origin, self.fragment = origin, fragment
        self.seen: list[float] = []
        self._done = threading.Event()
        self._start = len(origin.received)
        self._thread = threading.Thread(target=self._watch)

    def __enter__(self) -> OriginWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        arrived = self._arrived()  # the watcher has seen every request the origin has had
        wait_for(lambda: len(self.seen) >= arrived, within=10, every=0.005)
        self._done.set()
        self._thread.join()

    def _arrived(self) -> int:
        return sum(1 for r in self.origin.received[self._start:] if self.fragment in r.path)

    def _watch(self) -> None:
        while not self._done.is_set():  # sampled every 5 ms: the times are the measurement
            now, new = time.time(), self._arrived()
            self.seen.extend([now] * (new - len(self.seen)))
            time.sleep(0.005)


def test_the_request_rate_limit_holds(rules, store, origin, unique, tmp_path):
    keys = write_keys(tmp_path / "keys.txt", [f"{unique}/r{n:04d}" for n in range(100)])
    with OriginWatch(origin, unique) as watch:
        status = cli.main(command(rules, store, HTTP_BUCKET, tmp_path / "state", "--keys", str(keys),
                                  "--concurrency", "8", "--max-rps", "20"))
    assert status == 0 and len(watch.seen) == 100
    rate = (len(watch.seen) - 1) / (watch.seen[-1] - watch.seen[0])
    assert 16 <= rate <= 24, f"{rate:.1f} requests/s for --max-rps 20"


def test_the_bandwidth_limit_holds(rules, store, s3, origin, unique, tmp_path):
    keys = write_keys(tmp_path / "keys.txt", [f"{unique}/sized/{6 * MIB}/b{n}" for n in range(2)])
    with OriginWatch(origin, unique) as watch:
        status = cli.main(command(rules, store, HTTP_BUCKET, tmp_path / "state", "--keys", str(keys),
                                  "--max-bandwidth", "4m"))
    assert status == 0 and len(watch.seen) == 2
    # from the first request at the origin until the last body was stored (its journal line)
    last = max(json.loads(line)["time"] for line in (tmp_path / "state" / "journal.jsonl").read_text().splitlines())
    rate = 12 * MIB / (last - watch.seen[0])
    assert 0.8 * 4 * MIB <= rate <= 1.2 * 4 * MIB, f"{rate / MIB:.2f} MiB/s for --max-bandwidth 4m"


def test_origin_listing_refuses_rules_that_rewrite_keys(tmp_path, store, capsys):
    rules = write_rules(tmp_path / "rules.json", {
        "b": [mirror_rule(1, "http://127.0.0.1:9/bucket/", EnableReplacePrefix=True, ReplaceKeyPrefixWith="x/")]})
    assert cli.main(command(rules, store, "b", tmp_path / "state", "--origin-listing")) == 2
    assert "rewrites keys" in capsys.readouterr().err


def test_backfill_progress_on_the_metrics_endpoint(rules, store, origin, unique, tmp_path):
    """The same kind of endpoint as the proxy's: values move while the backfill runs."""
    port = free_ports(1)[0]
    keys = write_keys(tmp_path / "keys.txt", [f"{unique}/m{n:03d}" for n in range(40)])
    run = subprocess.Popen([BACKORIGIN, *command(rules, store, HTTP_BUCKET, tmp_path / "state", "--keys", str(keys), "--max-rps", "10",
                                     "--metrics-port", str(port))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def sample(name: str) -> float | None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        return next((s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name), None)

    try:
        readings = [wait_for(lambda: sample("backorigin_backfill_objects_done"), within=20)]
        readings.append(wait_for(lambda: (v := sample("backorigin_backfill_objects_done")) and v > readings[0] and v,
                                 within=20))
        assert sample("backorigin_backfill_objects") == 40
        assert 0 < readings[0] < readings[1] < 40
    finally:
        assert run.wait(timeout=60) == 0
