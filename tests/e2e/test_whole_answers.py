"""Every client of a miss gets the whole object, or sees its answer break: never a short answer
that looks whole (a client that checks nothing would write wrong bytes with exit status 0).

A miss over 8 MiB is answered by the loopback miss server (miss.server), whose answer mitmproxy
streams to the client. A request that says `Connection: close` (Python's urllib, nginx's proxy_pass
by default) or speaks HTTP/1.0 has the miss server close its connection after the answer; it used
to drop what was still buffered there instead, and a client was cut off short (17,013 bytes of
24 MiB, now and then). Real mitmdump with the addon in front of a SigV4 SeaweedFS, nginx and the
scripted origin, nginx as an HTTP front, and real clients whose bytes are checked by sha256 (a
client such as urllib, which checks nothing, shows a short answer only in its bytes): the
report's two proxies with three clients each at once, eight keys from nginx, with the fleet's
leases and without; each way a miss is answered through the miss server (whole, ranged, streamed
past backorigin_max_inline, s3transfer's HEAD then ranged parts from a pending write-back, a fill
resumed from the spool after kill -9); and answers that break mid-body, over HTTP/1.0, HTTP/1.1
and HTTP/2.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backorigin.tools.embedded_store import free_ports
from bench.services.nginx import NGINX_BASICS, Nginx
from bench.services.processes import Processes
from tests.clients import (
    Outcome,
    Target,
    aws_cp_file,
    boto3_download_file,
    curl,
    sized_sha256,
    stored_sha256,
    urllib_get,
)
from tests.modes_support import ModeMitmdump
from tests.nginx_origin import NginxOrigin, nginx_processes, start_origin
from tests.origin_server import ScriptedOrigin
from tests.support import Relay, mirror_rule, running, running_store, stored, wait_for, wait_stored, write_back_worker, write_rules

BUCKET = "whole-bucket"  # mirrors the scripted origin
NGINX_BUCKET = "whole-nginx"  # mirrors nginx
KEYS = ("wholekey", "wholesecret")
ENV = {"AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}
MiB = 1 << 20
WHOLE = 24 * MiB  # over the in-hook answer limit (8 MiB), under backorigin_max_inline: the miss server, whole
RANGE = (1000, 20 * MiB + 7)  # crosses the write-back's 16 MiB part boundary



Download = Callable[[Target, str, str, Path], Outcome]
http10_curl: Download = functools.partial(curl, options=["--http1.0"])
closing_curl: Download = functools.partial(curl, options=["-H", "Connection: close"])
closing_curl_range: Download = functools.partial(curl, first=RANGE[0], last=RANGE[1], options=["-H", "Connection: close"])


@pytest.fixture(scope="module")
def signed_store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("whole-store"), [BUCKET, NGINX_BUCKET], KEYS) as store:
        yield store


@pytest.fixture(scope="module")
def whole_origin() -> Iterator[ScriptedOrigin]:
    origin = ScriptedOrigin().start()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def rules(tmp_path_factory, whole_origin, nginx_origin) -> Path:
    return write_rules(tmp_path_factory.mktemp("whole-rules") / "rules.json",
                       {BUCKET: [mirror_rule(1, f"{whole_origin.base}/dir1/")],
                        NGINX_BUCKET: [mirror_rule(1, nginx_origin.base + "whole/")]})


def start_proxy(workdir: Path, store, rules: Path, **options: str) -> ModeMitmdump:
    """The README's reverse proxy; keep_host_header (SigV4 signs Host); the store's keys in its
    environment, for its write-backs."""
    return ModeMitmdump(f"reverse:{store.endpoint}", rules, workdir,
                        {"keep_host_header": "true", "backorigin_origin_timeout": "60", **options}, env=ENV).start()


@pytest.fixture(scope="module")
def processes() -> Iterator[Processes]:
    yield from nginx_processes()


@pytest.fixture(scope="module")
def nginx_origin(tmp_path_factory, processes) -> NginxOrigin:
    """nginx serving the 24 MiB body at /whole/<any key>, its own access log counting the GETs."""
    return start_origin(processes, tmp_path_factory.mktemp("whole-nginx-origin"), WHOLE,
                        "        location /whole/ { try_files /body.bin =404; }")


@pytest.fixture(scope="module", params=["s3://backorigin-leases/", "off"], ids=["leases", "no-leases"])
def pair(request, tmp_path_factory, signed_store, rules) -> Iterator[tuple[list[ModeMitmdump], str]]:
    """Two proxies in front of the one store: with the fleet's leases (the default) and without."""
    workdir = tmp_path_factory.mktemp("whole-pair")
    with ThreadPoolExecutor(2) as pool:
        proxies = list(pool.map(lambda n: start_proxy(workdir / f"proxy-{n}", signed_store, rules,
                                                      backorigin_leases=request.param), range(2)))
    yield proxies, request.param
    for proxy in proxies:
        proxy.stop()


def http_front(processes: Processes, workdir: Path, proxy: ModeMitmdump) -> str:
    """nginx in front of a proxy, set up as nginx usually is: proxy_pass with its defaults (HTTP/1.0
    and Connection: close to the proxy, the answer read as fast as it comes), Host passed on."""
    port = free_ports(1)[0]
    body = f"""
http {{
{NGINX_BASICS}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://127.0.0.1:{proxy.port}; proxy_set_header Host $http_host; }}
    }}
}}
"""
    Nginx("front", workdir, body).start(processes, [port])
    return f"http://127.0.0.1:{port}"


def bytes_of(outcome: Outcome, expected: str) -> str:
    if outcome.sha256 is None:
        return "nothing written"
    return "right" if outcome.sha256 == expected else f"wrong: {outcome.size} bytes"


def download_all(jobs: Sequence[tuple[str, Download, str, str, str]], workdir: Path,
                 bucket: str = BUCKET) -> list[tuple[str, int, str]]:
    """(name, client, endpoint, key, expected sha256) at once: each one's (name, exit status, bytes)."""
    def run(n: int) -> tuple[str, int, str]:
        name, client, endpoint, key, expected = jobs[n]
        outcome = client(Target(endpoint, *KEYS), bucket, key, workdir / f"client-{n}")
        return name, outcome.returncode, bytes_of(outcome, expected) + (f" ({outcome.stderr})" if outcome.returncode else "")

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, range(len(jobs))))


def everyone_right(jobs: Sequence[tuple[str, Download, str, str, str]]) -> list[tuple[str, int, str]]:
    return [(name, 0, "right") for name, *_ in jobs]


def whole_key(unique: str, name: str, size: int = WHOLE) -> str:
    return f"sized/{size}/{unique}-{name}.bin"


def landed_right(store, key: str, size: int, bucket: str = BUCKET) -> bool:
    s3 = store.client()
    wait_stored(s3, bucket, key, within=60)
    return stored_sha256(s3, bucket, key) == sized_sha256(size)


# the report: two proxies, three clients each, at once ---------------------------------------


def test_three_clients_per_proxy_on_two_proxies_get_every_byte(pair, signed_store, nginx_origin, tmp_path, unique):
    """The report: eight new 24 MiB keys from nginx in turn, each fetched at once by three clients
    on each of two proxies (urllib, which sends Connection: close and checks nothing; curl
    --http1.0; boto3 download_file on one proxy, aws s3 cp on the other), with the fleet's leases
    and without. Every client exits 0 with the right sha256; the origin's own log shows one GET
    per key with leases, at most one per proxy without; the right object is stored."""
    proxies, leases = pair
    s3transfer: list[tuple[str, Download]] = [("boto3 download_file", boto3_download_file), ("aws s3 cp", aws_cp_file)]
    for n in range(8):
        key = f"{unique}-{n}.bin"
        jobs = [(f"{name} via proxy {p}", client, proxy.url, key, sized_sha256(WHOLE))
                for p, proxy in enumerate(proxies)
                for name, client in [("urllib", urllib_get), ("curl --http1.0", http10_curl), s3transfer[p]]]
        assert download_all(jobs, tmp_path / str(n), NGINX_BUCKET) == everyone_right(jobs), key
        assert landed_right(signed_store, key, WHOLE, NGINX_BUCKET)
        assert 1 <= len(nginx_origin.gets(f"/whole/{key}")) <= (1 if leases != "off" else len(proxies))


# each way a miss is answered through the miss server --------------------------------------


def test_through_an_http_front_every_client_gets_every_byte(pair, processes, signed_store, tmp_path, unique):
    """nginx in front asks the proxy in HTTP/1.0 with Connection: close, whatever the client
    speaks: aws s3 cp and boto3 download_file (HEAD, then 8 MiB ranged parts), curl whole and
    ranged, urllib, each on a new 24 MiB key, all at once."""
    front = http_front(processes, tmp_path / "front", pair[0][0])
    whole = sized_sha256(WHOLE)
    jobs: list[tuple[str, Download, str, str, str]] = [
        ("aws s3 cp", aws_cp_file, front, whole_key(unique, "aws"), whole),
        ("boto3 download_file", boto3_download_file, front, whole_key(unique, "boto3"), whole),
        ("curl", curl, front, whole_key(unique, "curl"), whole),
        ("curl -r", functools.partial(curl, first=RANGE[0], last=RANGE[1]), front, whole_key(unique, "range"),
         sized_sha256(WHOLE, *RANGE)),
        ("urllib", urllib_get, front, whole_key(unique, "urllib"), whole),
    ]
    assert download_all(jobs, tmp_path) == everyone_right(jobs)
    for _, _, _, key, _ in jobs:
        assert landed_right(signed_store, key, WHOLE), key


def test_a_miss_streamed_past_max_inline_reaches_closing_clients_whole(signed_store, rules, tmp_path, unique):
    """backorigin_max_inline=8m: a 24 MiB miss is streamed as it arrives, its last byte held
    until the body is spooled; the clients ask at once, whole and ranged."""
    proxy = start_proxy(tmp_path / "proxy", signed_store, rules, backorigin_max_inline="8m")
    key = whole_key(unique, "streamed")
    try:
        jobs = [("urllib", urllib_get, proxy.url, key, sized_sha256(WHOLE)),
                ("curl --http1.0", http10_curl, proxy.url, key, sized_sha256(WHOLE)),
                ("curl -r, Connection: close", closing_curl_range, proxy.url, key, sized_sha256(WHOLE, *RANGE))]
        assert download_all(jobs, tmp_path) == everyone_right(jobs)
        assert landed_right(signed_store, key, WHOLE)
    finally:
        assert proxy.stop() == 0


def test_head_then_ranged_parts_from_a_pending_write_back_through_an_http_front(processes, signed_store, rules,
                                                                               whole_origin, tmp_path, unique):
    """The write-back is held longer than a HEAD waits for it (10 s): s3transfer's 8 MiB ranged
    parts, asked by nginx in HTTP/1.0, are answered from the fill in the spool."""
    slow_store = Relay(signed_store.s3_port, delay=15.0)
    proxy = start_proxy(tmp_path / "proxy", signed_store, rules, backorigin_s3_endpoint=f"http://127.0.0.1:{slow_store.port}")
    try:
        front = http_front(processes, tmp_path / "front", proxy)
        key = whole_key(unique, "parts")
        jobs = [("aws s3 cp", aws_cp_file, front, key, sized_sha256(WHOLE)),
                ("boto3 download_file", boto3_download_file, front, key, sized_sha256(WHOLE))]
        assert download_all(jobs, tmp_path) == everyone_right(jobs)
        assert stored(signed_store.client(), BUCKET, key) is None, "landed too early: the parts did not meet a pending write-back"
        assert whole_origin.count("GET", f"{unique}-parts.bin") == 1
        assert landed_right(signed_store, key, WHOLE)
    finally:
        assert proxy.stop() == 0
        slow_store.close()


def test_a_fill_resumed_from_the_spool_after_kill_9_reaches_closing_clients_whole(signed_store, rules, whole_origin,
                                                                                 tmp_path, unique):
    """The write-back cannot get through; the proxy is killed; the next one on the same spool
    answers the object from its spooled body until it lands."""
    spool, key = tmp_path / "spool", whole_key(unique, "resumed")
    stuck_store = Relay(signed_store.s3_port, delay=600)
    stuck = {"backorigin_spool_dir": str(spool), "backorigin_s3_endpoint": f"http://127.0.0.1:{stuck_store.port}",
             "backorigin_shutdown_timeout": "1"}
    try:
        first = start_proxy(tmp_path / "first", signed_store, rules, **stuck)
        assert download_all([("urllib", urllib_get, first.url, key, sized_sha256(WHOLE))], tmp_path / "first") == [
            ("urllib", 0, "right")]
        worker = write_back_worker(first.pid)
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        wait_for(lambda: not running(worker), within=10)
        second = start_proxy(tmp_path / "second", signed_store, rules, **stuck)
        try:
            jobs = [("urllib", urllib_get, second.url, key, sized_sha256(WHOLE)),
                    ("curl --http1.0", http10_curl, second.url, key, sized_sha256(WHOLE)),
                    ("curl, Connection: close", closing_curl, second.url, key, sized_sha256(WHOLE)),
                    ("curl -r, Connection: close", closing_curl_range, second.url, key, sized_sha256(WHOLE, *RANGE))]
            assert download_all(jobs, tmp_path / "second") == everyone_right(jobs)
            assert second.log().count(f"joins the origin fetch under way for {key} (or its spooled body)") == len(jobs)
        finally:
            second.stop()
    finally:
        stuck_store.close()
    assert whole_origin.count("GET", f"{unique}-resumed.bin") == 1
    assert stored(signed_store.client(), BUCKET, key) is None


# an answer that can no longer be finished breaks ---------------------------------------------


def test_an_answer_that_breaks_mid_body_breaks_every_client(signed_store, rules, tmp_path, unique):
    """The origin's body breaks off while it is being streamed (backorigin_max_inline=1m): the
    client's HTTP/1 connection is reset and its HTTP/2 stream too, so even a client that reads to
    the close without checking Content-Length (urllib with shutil.copyfileobj) fails."""
    proxy = start_proxy(tmp_path / "proxy", signed_store, rules, backorigin_max_inline="1m")
    tls = f"https://proxy.test:{proxy.port}"
    over_tls = ["--resolve", f"proxy.test:{proxy.port}:127.0.0.1", "--cacert", str(proxy.client_ca)]
    clients: list[tuple[str, Download, str]] = [
        ("urllib", urllib_get, proxy.url),
        ("curl --http1.0", http10_curl, proxy.url),
        ("curl, Connection: close", closing_curl, proxy.url),
        ("curl --http1.1 over TLS", functools.partial(curl, options=["--http1.1", *over_tls]), tls),
        ("curl --http2 over TLS", functools.partial(curl, options=["--http2", *over_tls]), tls),
    ]
    try:
        outcomes = {name: client(Target(endpoint, *KEYS), BUCKET, f"shortsized/{4 * MiB}/{unique}-{n}", tmp_path / str(n))
                    for n, (name, client, endpoint) in enumerate(clients)}
    finally:
        assert proxy.stop() == 0
    assert {name: outcome.returncode != 0 for name, outcome in outcomes.items()} == {name: True for name, *_ in clients}, (
        {name: (outcome.returncode, outcome.size, outcome.stderr) for name, outcome in outcomes.items()})
    assert "Connection reset by peer" in outcomes["urllib"].stderr
