"""One origin fetch per fleet, measured: four proxies (mitmdump with the addon, default options) in
front of one SigV4 SeaweedFS, behind nginx's stream balancer (bench.services.nginx, as `make bench`
runs it); the origin is nginx serving files, whose own access log counts the GETs. Twenty
clients at once (aws s3 cp and boto3 download_file: a HEAD, then 8 MiB ranged GETs with If-Match)
on one new 120 MiB key; a proxy killed (kill -9) mid-fill; a fill that outlasts its lease's time
to live; and the store requests a miss costs."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backorigin.miss.leases import LONGEST_PAUSE
from backorigin.miss.leasestore import LeasePlace
from backorigin.tools.embedded_store import free_ports
from bench.services.nginx import (
    STORE_LOG,
    STREAM_MODULE,
    Nginx,
    StoreLog,
    balancer_config,
    counting_relay_config,
    nginx_binary,
    origin_config,
)
from bench.services.processes import Processes
from tests.clients import Outcome, Target, aws_cp_file, boto3_client, boto3_download_file
from tests.modes_support import ModeMitmdump
from tests.support import mirror_rule, running_store, stored, wait_for, write_rules

BUCKET = "fleet-bucket"
KEYS = ("fleetkey", "fleetsecret")
ENV = {"AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}
MIB = 1024 * 1024
BIG = 120 * MIB
SLOW = 24 * MIB
SLOW_RATE = "4m"  # nginx's limit_rate: the slow object takes about 6 s to send
TTL = 3.0


@dataclass
class Origin:
    nginx: Nginx
    port: int
    sha256: dict[str, str]  # by location: what a client must get

    def gets(self, key: str) -> list[float]:
        """When each GET of `key` in the origin's own access log began (a line is written as its
        answer ends: $request_uri $status $bytes $msec $request_time $request_method)."""
        log = self.nginx.workdir / "origin-access.log"
        lines = [line.split() for line in (log.read_text().splitlines() if log.exists() else [])]
        return sorted(float(f[3]) - float(f[4]) for f in lines if f[0] == f"/{key}" and f[-1] == "GET")


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def processes() -> Iterator[Processes]:
    missing = [what for what, there in (("nginx", Path(nginx_binary()).exists()), ("libnginx-mod-stream", STREAM_MODULE.exists()))
               if not there]
    if missing:
        pytest.fail(f"the fleet tests need Debian's {' and '.join(missing)} (.ci/run installs them as root)")
    registry = Processes()
    yield registry
    registry.close()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, processes) -> Origin:
    root = tmp_path_factory.mktemp("fleet-origin")
    sha256 = {"big": write_random(root / "big.bin", BIG), "slow": write_random(root / "slow.bin", SLOW),
              "small": write_random(root / "small.bin", MIB)}
    port = free_ports(1)[0]
    files = {"big": "big.bin", "slow": "slow.bin", "small": "small.bin"}
    nginx = Nginx("origin", root / "nginx", origin_config(port, root, files, rates={"slow": SLOW_RATE}))
    return Origin(nginx.start(processes, [port]), port, sha256)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("fleet-store"), [BUCKET], KEYS) as store:
        yield store


@pytest.fixture(scope="module")
def rules(tmp_path_factory, origin):
    return write_rules(tmp_path_factory.mktemp("fleet-rules") / "rules.json",
                       {BUCKET: [mirror_rule(1, f"http://127.0.0.1:{origin.port}/")]})


def start_proxies(count: int, workdir: Path, store, rules: Path, **options: str) -> list[ModeMitmdump]:
    proxies = [
        ModeMitmdump(f"reverse:{store.endpoint}", rules, workdir / f"proxy-{n}",
                     {"keep_host_header": "true", "backorigin_metrics_port": str(free_ports(1)[0]), **options}, env=ENV)
        for n in range(count)
    ]
    with ThreadPoolExecutor(count) as pool:  # each takes a few seconds to start
        list(pool.map(lambda proxy: proxy.start(60), proxies))
    return proxies


def stop_all(proxies: list[ModeMitmdump]) -> None:
    for proxy in proxies:
        proxy.stop()


def samples(proxy: ModeMitmdump, name: str) -> list:
    """The samples of metric `name` the proxy's metrics endpoint shows now."""
    url = f"http://127.0.0.1:{proxy.options['backorigin_metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name]


def lease_counts(proxy: ModeMitmdump) -> dict[str, float]:
    return {sample.labels["outcome"]: sample.value for sample in samples(proxy, "backorigin_leases_total")}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, processes, store, rules) -> Iterator[tuple[list[ModeMitmdump], str]]:
    """Four proxies with the default options behind nginx's stream balancer: (proxies, balancer URL)."""
    workdir = tmp_path_factory.mktemp("fleet")
    proxies = start_proxies(4, workdir, store, rules)
    port = free_ports(1)[0]
    Nginx("balancer", workdir / "balancer", balancer_config({port: [proxy.port for proxy in proxies]})).start(processes, [port])
    yield proxies, f"http://127.0.0.1:{port}"
    stop_all(proxies)


def download(client: str, endpoint: str, key: str, workdir: Path) -> Outcome:
    target = Target(endpoint, *KEYS)
    return aws_cp_file(target, BUCKET, key, workdir) if client == "aws" else boto3_download_file(target, BUCKET, key, workdir)


def test_twenty_clients_on_four_proxies_cost_the_origin_one_get(fleet, origin, store, tmp_path, unique):
    proxies, balancer = fleet
    key = f"big/{unique}.bin"
    clients = ["aws", "boto3"] * 10
    started = time.monotonic()
    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(lambda n: download(clients[n], balancer, key, tmp_path / f"client-{n}"), range(len(clients))))
    took = time.monotonic() - started
    for client, outcome in zip(clients, outcomes, strict=True):
        assert outcome.returncode == 0 and outcome.sha256 == origin.sha256["big"] and outcome.size == BIG, (client, outcome)
    assert len(origin.gets(key)) == 1, "one origin GET for the whole fleet"
    counts = [lease_counts(proxy) for proxy in proxies]
    assert sum(c.get("held", 0) for c in counts) == 1 and sum(c.get("unavailable", 0) for c in counts) == 0, counts
    assert sum(c.get("waited_too_long", 0) + c.get("taken_over", 0) for c in counts) == 0, counts
    s3 = store.client()
    assert hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest() == origin.sha256["big"]
    wait_for(lambda: all(samples(proxy, "backorigin_leases_held")[0].value == 0 for proxy in proxies), within=30)
    lease = s3.head_object(Bucket="backorigin-leases", Key=LeasePlace("backorigin-leases").of(BUCKET, key)[1])
    holder = proxies[[c.get("held", 0) for c in counts].index(1)]
    assert f"pid {holder.pid}" in lease["Metadata"]["backorigin-owner"], "its holder left it to run out"
    print(f"20 clients, 4 proxies, one new 120 MiB key: {took:.1f}s, origin GETs {len(origin.gets(key))}, "
          f"leases {[{k: int(v) for k, v in c.items() if v} for c in counts]}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, store, rules) -> Iterator[list[ModeMitmdump]]:
    """Two proxies whose leases last TTL seconds, reached directly (the test picks which fills)."""
    proxies = start_proxies(2, tmp_path_factory.mktemp("pair"), store, rules, backorigin_lease_ttl=f"{TTL:g}",
                            backorigin_lease_wait="120")
    yield proxies
    stop_all(proxies)


class Reading(threading.Thread):
    """A GET of the whole object through one proxy, read to its end (or until it breaks)."""

    def __init__(self, endpoint: str, key: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.key = endpoint, key
        self.sha256: str | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            body = boto3_client(Target(self.endpoint, *KEYS)).get_object(Bucket=BUCKET, Key=self.key)["Body"]
            digest = hashlib.sha256()
            while chunk := body.read(MIB):
                digest.update(chunk)
            self.sha256 = digest.hexdigest()
        except Exception as e:  # the proxy was killed under it
            self.error = e


def fill_begun(key: str, proxy: ModeMitmdump) -> Reading:
    """A client's GET through `proxy`, once the proxy holds the key's lease and the body is
    arriving from the slow origin into its spool (its metrics say so)."""
    reading = Reading(proxy.url, key)
    reading.start()
    wait_for(lambda: samples(proxy, "backorigin_leases_held")[0].value == 1
             and samples(proxy, "backorigin_spool_bytes")[0].value >= MIB, within=30, every=0.05)
    return reading


def test_a_fill_longer_than_the_lease_keeps_it(pair, origin, store, tmp_path, unique):
    """The holder renews its lease while its slow fill runs (twice as long as the lease lasts)."""
    filling, waiting = pair
    key = f"slow/{unique}.bin"
    first = fill_begun(key, filling)
    second = download("boto3", waiting.url, key, tmp_path)
    first.join(60)
    assert second.returncode == 0 and second.sha256 == origin.sha256["slow"], second
    assert first.error is None and first.sha256 == origin.sha256["slow"]
    assert len(origin.gets(key)) == 1, "the waiting proxy never took over a lease that was renewed"


def test_a_proxy_killed_mid_fill_holds_the_key_no_longer_than_its_lease(pair, origin, store, tmp_path, unique):
    filling, waiting = pair
    key = f"slow/{unique}.bin"
    first = fill_begun(key, filling)
    outcome: list[Outcome] = []
    second = threading.Thread(target=lambda: outcome.append(download("aws", waiting.url, key, tmp_path)), daemon=True)
    second.start()
    wait_for(lambda: f"s3://{BUCKET}/{key}: " in waiting.log() and "is fetching it; waiting" in waiting.log(), within=30)
    os.kill(filling.pid, signal.SIGKILL)
    killed = time.time()
    second.join(120)
    assert outcome and outcome[0].returncode == 0 and outcome[0].sha256 == origin.sha256["slow"], outcome
    first.join(30)
    assert first.sha256 is None and first.error is not None, "the killed proxy's client saw its answer break, not end"
    gets = wait_for(lambda: len(found := origin.gets(key)) == 2 and found)
    held = gets[1] - killed
    # the holder renewed every TTL/3; the store's Last-Modified has whole seconds; a waiter looks every LONGEST_PAUSE
    assert 0 < held <= TTL + 1 + LONGEST_PAUSE + 2, f"the key was held {held:.1f}s after the kill; the lease lasts {TTL:g}s"
    assert stored(store.client(), BUCKET, key)
    print(f"proxy killed mid-fill: the other proxy's origin GET began {held:.1f}s later (lease {TTL:g}s)")


def test_a_miss_no_other_proxy_fills_costs_one_store_request_more(tmp_path_factory, processes, store, origin, unique):
    """Through nginx logging every store request (bench's counting relay), leases on and off, from
    the miss until the proxy has stopped: the lease's write before the origin GET, nothing else
    (the lease is left to run out). The key deleted and missed again: the proxy takes its lease
    back, one request again."""
    workdir = tmp_path_factory.mktemp("counted")
    port = free_ports(1)[0]
    relay = Nginx("store-relay", workdir / "relay", counting_relay_config(port, store.s3_port)).start(processes, [port])
    log = StoreLog(relay.workdir / STORE_LOG)
    rules = write_rules(workdir / "rules.json", {BUCKET: [mirror_rule(1, f"http://127.0.0.1:{origin.port}/")]})
    s3 = store.client()
    seen: dict[str, list[str]] = {}

    def mirrored(client, key: str) -> None:
        assert hashlib.sha256(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest() == origin.sha256["small"]
        wait_for(lambda: stored(s3, BUCKET, key), within=60)

    for name, leases in (("on", "s3://backorigin-leases/"), ("off", "off")):
        proxy = ModeMitmdump(f"reverse:http://127.0.0.1:{port}", rules, workdir / name,
                             {"keep_host_header": "true", "backorigin_leases": leases}, env=ENV).start()
        key = f"small/{unique}-{name}"
        lease = "/backorigin-leases/" + LeasePlace("backorigin-leases").of(BUCKET, key)[1]
        try:
            client = boto3_client(Target(proxy.url, *KEYS))
            mirrored(client, f"small/{unique}-warm-{name}")  # the lease bucket is looked at once per proxy
            log.mark()
            mirrored(client, key)
            s3.delete_object(Bucket=BUCKET, Key=key)  # straight to the store: the proxy knows nothing of it
            mirrored(client, key)
        finally:
            proxy.stop()
        seen[name] = [f"{r.method} {r.status}" + (" lease" if r.target == lease else "")
                      for r in log.since_mark() if r.target in (f"/{BUCKET}/{key}", lease)]
    miss = ["GET 404", "PUT 200"]  # the probe, the write-back
    assert seen["off"] == miss + miss, seen
    assert seen["on"] == ["GET 404", "PUT 200 lease", "PUT 200"] * 2, seen
    assert len(seen["on"]) <= len(seen["off"]) + 2, "one store request more per miss"
