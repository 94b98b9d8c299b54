"""Ceph's s3-tests through the proxy, compared with a direct run against the same store.

    .venv/bin/python -m bench.s3tests --mode direct       # first: the reference
    .venv/bin/python -m bench.s3tests --mode origin-all   # Mirror rules on bo-1..bo-3000, an origin with every key
    .venv/bin/python -m bench.s3tests --mode origin-404   # the same rules, an origin that has nothing

Each run starts a fresh SeaweedFS (`weed mini` with identities main, alt and tenant), for a
proxied mode a small origin and mitmdump with the addon (README's command line,
keep_host_header=true), writes an s3tests.conf whose bucket prefix `bo-` makes the buckets
bo-1, bo-2, ... (s3-tests counts them), and runs one fixed selection of 516 tests. Results go
to bench/out/s3tests/: MODE.xml (JUnit), MODE.ids (outcome and id, one a line), MODE.json
(outcomes, first line of each failure, timings) and the logs of pytest, the proxy and the store.
A proxied run then prints every test id whose outcome differs from the direct run's.

Other modes: `plain` (mitmdump without the addon), `no-rules` (the addon with an empty rules
file). `--tests ID ...` reruns some tests only (ids as MODE.ids prints them), `--record` keeps the
proxy's flows (mitmdump -w) and sets backorigin_debug_header, to investigate a difference.

The s3-tests checkout is not part of this repository: clone ceph/s3-tests (GitHub; results in
BENCHMARKS.md are from commit 8f0ae7b) beside it or pass --s3tests PATH. Its venv (PATH/.venv)
is created with its requirements.txt when missing. Not part of `make test`: a run takes minutes.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.support import REPO, mirror_rule, mitmdump_command, wait_until_listening, write_rules

OUT = REPO / "bench" / "out" / "s3tests"
MODES = ("direct", "plain", "no-rules", "origin-all", "origin-404")
BUCKET_PREFIX = "bo-"
KEPT = ("mitmdump.log", "weed.log", "flows.mitm", "rules.json", "s3tests.conf")  # copied from the run's temp dir to OUT

# the keys of s3tests.conf.SAMPLE; SeaweedFS gets an Admin identity for each
IDENTITIES = {
    "main": ("0555b35654ad1656d804", "h7GhxuBLTrlhVUyxSPUKUV8r/2EI4ngqJxD7iBdBYLhwluN30JaT3Q=="),
    "alt": ("NOPQRSTUVWXYZABCDEFG", "nopqrstuvwxyzabcdefghijklmnabcdefghijklm"),
    "tenant": ("HIJKLMNOPQRSTUVWXYZA", "opqrstuvwxyzabcdefghijklmnopqrstuvwxyzab"),
}

# objects, listing, multipart, ACL, copy, POST, versioning, object lock, and every header test:
# what SeaweedFS implements and a proxy in front of it can change
TEST_FILES = ("s3tests/functional/test_s3.py", "s3tests/functional/test_headers.py")
MARKERS = (
    "not bucket_logging and not bucket_logging_cleanup and not encryption and not sse_s3 and not bucket_encryption"
    " and not lifecycle and not lifecycle_expiration and not lifecycle_transition and not bucket_policy and not checksum"
    " and not cloud_transition and not cloud_restore and not object_ownership and not iam_user and not iam_account"
    " and not s3website and not appendobject and not (fails_on_rgw and not auth_common and not auth_aws2)"
)


def log(message: str) -> None:
    print(f"s3tests: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# the origin


class _OriginHandler(BaseHTTPRequestHandler):
    status = 200  # set per server class: 200 (every key) or 404 (none)
    protocol_version = "HTTP/1.1"

    def _answer(self, with_body: bool) -> None:
        body = f"origin body for {self.path}\n".encode() if self.status == 200 else b"no such file\n"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", "Tue, 01 Jan 2030 00:00:00 GMT")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:
        server = self.server
        assert isinstance(server, _Origin)
        server.requests += 1


class _Origin(ThreadingHTTPServer):
    daemon_threads = True
    requests = 0


@contextmanager
def origin(status: int) -> Iterator[_Origin]:
    handler = type("Handler", (_OriginHandler,), {"status": status})
    server = _Origin(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------
# the proxy


@contextmanager
def proxy(mode: str, store: EmbeddedStore, work: Path, rules: Path | None, record: bool) -> Iterator[int]:
    port = free_ports(1)[0]
    options = {"keep_host_header": "true", "confdir": str(work / "confdir")}
    extra: list[str] = []
    if record:
        extra = ["-w", str(work / "flows.mitm")]
        if rules is not None:
            options["backorigin_debug_header"] = "true"
    command = mitmdump_command(f"reverse:{store.endpoint}", port, rules, options, extra)
    log_path = work / "mitmdump.log"
    # write-backs sign with boto3's standard chain: the main identity's keys
    env = {**os.environ, "AWS_ACCESS_KEY_ID": IDENTITIES["main"][0], "AWS_SECRET_ACCESS_KEY": IDENTITIES["main"][1]}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_listening(process, lambda: log_path.read_text(errors="replace"), 60.0)
        log(f"{mode}: proxy on 127.0.0.1:{port} -> {store.endpoint}")
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------------------------------
# s3-tests


def s3tests_python(checkout: Path) -> Path:
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        log(f"creating {checkout / '.venv'} with {checkout / 'requirements.txt'}")
        subprocess.run([sys.executable, "-m", "venv", str(checkout / ".venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(checkout / "requirements.txt")], check=True)
    return python


def write_conf(checkout: Path, path: Path, port: int) -> None:
    conf = configparser.RawConfigParser()
    conf.read(checkout / "s3tests.conf.SAMPLE")
    conf["DEFAULT"]["host"] = "127.0.0.1"
    conf["DEFAULT"]["port"] = str(port)
    conf["DEFAULT"]["is_secure"] = "False"
    conf["fixtures"]["bucket prefix"] = BUCKET_PREFIX
    for name, (access, secret) in IDENTITIES.items():
        conf[f"s3 {name}"]["access_key"] = access
        conf[f"s3 {name}"]["secret_key"] = secret
    with open(path, "w") as out:
        conf.write(out)


@dataclass
class Outcome:
    outcome: str  # passed, failed, error, skipped
    message: str = ""


def read_junit(path: Path) -> dict[str, Outcome]:
    """Test id (FILE::NAME) -> outcome; a test that failed and also errored in teardown is 'failed'."""
    rank = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}
    results: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name', '')}"
        outcome = Outcome("passed")
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip().splitlines()
                outcome = Outcome(kind, message[0][:300] if message else "")
                break
        previous = results.get(test_id)
        if previous is None or rank[outcome.outcome] > rank[previous.outcome]:
            results[test_id] = outcome
    return results


def run_pytest(checkout: Path, conf: Path, junit: Path, log_path: Path, tests: list[str], timeout: float) -> int:
    command = [str(s3tests_python(checkout)), "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-v", "-rA",
               f"--junitxml={junit}"]
    command += tests if tests else [*TEST_FILES, "-m", MARKERS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["S3TEST_CONF"] = str(conf)
    with open(log_path, "wb") as out:
        try:
            return subprocess.run(command, cwd=checkout, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            log(f"pytest did not finish within {timeout:g}s: see {log_path}")
            return -1


# ---------------------------------------------------------------------------------------
# one run


def run(mode: str, checkout: Path, buckets: int, tests: list[str], record: bool, timeout: float) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    name = mode if not tests else f"{mode}-subset"
    for suffix in (".xml", ".ids", ".json", "-pytest.log", *(f"-{kept}" for kept in KEPT)):
        (OUT / f"{name}{suffix}").unlink(missing_ok=True)  # nothing of an earlier run passes for this one's
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"s3tests-{mode}-") as tmp:
        work = Path(tmp)
        identities = work / "identities.json"
        identities.write_text(json.dumps({"identities": [
            {"name": who, "credentials": [{"accessKey": access, "secretKey": secret}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
            for who, (access, secret) in IDENTITIES.items()
        ]}))
        store = EmbeddedStore(work / "store", free_ports(1, with_grpc=True)[0], *IDENTITIES["main"],
                              extra_args=(f"-s3.config={identities}",))
        origin_requests = 0
        try:
            store.start(log_path=work / "weed.log")
            log(f"{mode}: SeaweedFS on {store.endpoint}")
            conf = work / "s3tests.conf"
            if mode == "direct":
                write_conf(checkout, conf, store.s3_port)
                code = run_pytest(checkout, conf, OUT / f"{name}.xml", OUT / f"{name}-pytest.log", tests, timeout)
            else:
                with origin(200 if mode == "origin-all" else 404) as server:
                    rules: Path | None = None
                    if mode != "plain":
                        rules = work / "rules.json"
                        base = f"http://127.0.0.1:{server.server_address[1]}/"
                        named = range(1, buckets + 1) if mode.startswith("origin") else range(0)
                        write_rules(rules, {f"{BUCKET_PREFIX}{n}": [mirror_rule(1, base)] for n in named})
                    with proxy(mode, store, work, rules, record) as port:
                        write_conf(checkout, conf, port)
                        code = run_pytest(checkout, conf, OUT / f"{name}.xml", OUT / f"{name}-pytest.log", tests, timeout)
                    origin_requests = server.requests
        finally:
            store.stop()
            for kept in KEPT:
                if (work / kept).exists():
                    shutil.copy(work / kept, OUT / f"{name}-{kept}")
    seconds = time.monotonic() - started
    results = read_junit(OUT / f"{name}.xml") if (OUT / f"{name}.xml").exists() else {}
    counts: dict[str, int] = {}
    for outcome in results.values():
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
    proxy_log = OUT / f"{name}-mitmdump.log"
    addon_errors = proxy_log.read_text(errors="replace").count("Addon error") if mode not in ("direct", "plain") else 0
    summary = {"mode": mode, "seconds": round(seconds), "pytest_exit": code, "counts": counts,
               "origin_requests": origin_requests, "addon_errors": addon_errors,
               "results": {test_id: [o.outcome, o.message] for test_id, o in sorted(results.items())}}
    (OUT / f"{name}.json").write_text(json.dumps(summary, indent=1))
    (OUT / f"{name}.ids").write_text("".join(f"{o.outcome}\t{test_id}\n" for test_id, o in sorted(results.items())))
    return summary


def compare(summary: dict, reference: dict, subset: bool) -> tuple[list[str], list[str]]:
    """Lines naming every test whose outcome differs from the reference run's, and lines naming
    those with the same outcome but another failure message (a subset: its tests only)."""
    outcomes: list[str] = []
    messages: list[str] = []
    ours: dict[str, list[str]] = summary["results"]
    theirs: dict[str, list[str]] = reference["results"]
    for test_id in sorted(set(ours) if subset else set(ours) | set(theirs)):
        mine, other = ours.get(test_id, ["absent", ""]), theirs.get(test_id, ["absent", ""])
        if mine[0] != other[0]:
            outcomes.append(f"{test_id}: {other[0]} directly, {mine[0]} here" + (f": {mine[1]}" if mine[1] else ""))
            if other[1]:
                outcomes.append(f"    directly: {other[1]}")
        elif mine[1] != other[1]:
            messages.append(f"{test_id}: {mine[0]} both times\n    directly: {other[1]}\n    here:     {mine[1]}")
    return outcomes, messages


def report(name: str, summary: dict, subset: bool) -> int:
    """Print a run's counts and its differences from the direct run; the number of tests that differ."""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary["counts"].items()))
    proxied = summary["mode"] not in ("direct", "plain")
    print(f"{name}: {counts or 'no results'} in {summary['seconds']} s (pytest exit {summary['pytest_exit']}"
          + (f", {summary['origin_requests']} origin requests, {summary['addon_errors']} 'Addon error' lines in {name}-mitmdump.log"
             if proxied else "") + ")", flush=True)
    reference_path = OUT / "direct.json"
    if subset and not reference_path.exists():
        reference_path = OUT / "direct-subset.json"
    if summary["mode"] == "direct" or not reference_path.exists():
        if summary["mode"] != "direct":
            print(f"  no direct run to compare with ({reference_path} is missing)")
        return 0
    outcomes, messages = compare(summary, json.loads(reference_path.read_text()), subset)
    count = sum(1 for line in outcomes if not line.startswith(" "))
    print(f"  {count} tests differ from the direct run" + (":" if outcomes else ""))
    for line in outcomes:
        print(f"  {line}")
    if messages:
        print(f"  {len(messages)} tests have the same outcome with another failure message:")
        for line in messages:
            print("  " + line.replace("\n", "\n  "))
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3tests", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=MODES, action="append",
                        help="direct, origin-all or origin-404 (the three compared in BENCHMARKS.md), plain or no-rules;"
                             " several run one after the other (default: direct)")
    parser.add_argument("--s3tests", type=Path, default=REPO.parent / "s3-tests", help="the ceph/s3-tests checkout (default: %(default)s)")
    parser.add_argument("--buckets", type=int, default=3000, help="rules for bo-1..bo-N (default: %(default)s)")
    parser.add_argument("--tests", nargs="+", default=[], metavar="ID", help="only these test ids (file::name)")
    parser.add_argument("--record", action="store_true", help="keep the proxy's flows (MODE-flows.mitm) and set backorigin_debug_header")
    parser.add_argument("--report", action="store_true", help="run nothing: print the results of earlier runs of these modes")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds pytest may take (default: %(default)s)")
    args = parser.parse_args(argv)
    checkout: Path = args.s3tests.resolve()
    if not args.report and not (checkout / "s3tests" / "functional" / "test_s3.py").exists():
        parser.error(f"{checkout} is not an s3-tests checkout (git clone ceph/s3-tests there, or pass --s3tests PATH)")
    differing = 0
    for mode in args.mode or ["direct"]:
        name = mode if not args.tests else f"{mode}-subset"
        if args.report:
            if not (OUT / f"{name}.json").exists():
                parser.error(f"no results of {name} in {OUT}")
            summary = json.loads((OUT / f"{name}.json").read_text())
        else:
            summary = run(mode, checkout, args.buckets, args.tests, args.record, args.timeout)
        differing += report(name, summary, bool(args.tests))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
