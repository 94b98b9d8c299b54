"""The `backorigin` command as pip installs it: `run` in front of a real store, in reverse mode
and in regular mode with the AWS CLI through HTTPS_PROXY; two `run`s on one machine keep their
own spools; and the package it installs (`import backorigin`, no top-level `addon`). Its offline
commands: tests/unit/test_tools_cli.py."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from backorigin.tools.embedded_store import free_ports
from tests.modes_support import VENV_BIN, BackoriginRun, make_test_ca, make_tls_store
from tests.origin_server import body_for, sized_body
from tests.support import (
    BACKORIGIN,
    REPO,
    http_get,
    mirror_rule,
    stored,
    wait_for,
    wait_stored,
    wait_until_listening,
    write_rules,
)


def test_run_serves_a_miss_in_front_of_the_store(tmp_path, store, origin, rules_file, unique):
    """From another directory, as an installed command: mitmdump with the addon, reverse mode."""
    port = free_ports(1)[0]
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [BACKORIGIN, "run", "--store", store.endpoint, "--rules", str(rules_file), "--listen", f"127.0.0.1:{port}",
             "--set", f"confdir={tmp_path / 'confdir'}", "--set", "backorigin_origin_timeout=5"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(process, lambda: log.read_text(errors="replace"), 30)
        status, _, body = http_get(f"http://127.0.0.1:{port}/mirror-bucket/ok/{unique}")
        assert status == 200 and body == body_for(f"/dir1/ok/{unique}")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


def test_the_wheel_installs_backorigin_and_no_addon_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("backorigin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("backorigin-")} == {"backorigin"}
    assert {"backorigin/py.typed", "backorigin/addon.py", "backorigin/tools/cli.py", "backorigin/scripts/mitmproxy_addon.py",
            "backorigin/tools/sample/rules.json", "backorigin/tools/sample/origin/hello.txt",  # the demo runs from the wheel
            "backorigin/tools/sample/origin/images/logo.svg", "backorigin/tools/sample/origin/docs/readme.md"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "backorigin = backorigin.tools.cli:main" in text and "backorigin = backorigin.pytest_plugin" in text


# regular mode: the AWS CLI through HTTPS_PROXY, TLS intercepted -------------------------------

KEYS = ("runkey", "runsecret")  # the store checks SigV4: the CLI's requests and the proxy's write-backs are signed
HTTPS_BUCKET = "https-bucket"


@pytest.fixture(scope="module")
def https_store(tmp_path_factory):
    """What a client that goes through HTTPS_PROXY most likely talks to: a store that speaks
    HTTPS (as AWS S3 and hosted S3 stores do) and checks signatures. Its certificate is signed
    by a private test CA, as a company's own store's would be."""
    ca = make_test_ca(tmp_path_factory.mktemp("store-ca"))
    store = make_tls_store(tmp_path_factory.mktemp("https-store"), ca, *KEYS)
    store.start()
    store.create_buckets([HTTPS_BUCKET])
    yield store, ca
    store.stop()


def sha256_of(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_run_regular_mode_serves_the_aws_cli_over_https_proxy(tmp_path, https_store, origin, unique):
    """The README's "Regular mode" as written: `backorigin run --mode regular` trusting the store's
    CA (ssl_verify_upstream_trusted_ca for mitmproxy, AWS_CA_BUNDLE for the write-backs); the CLI
    keeps the store as its endpoint, sets HTTPS_PROXY and trusts mitmproxy's CA alone
    (AWS_CA_BUNDLE), so its TLS can only succeed through the interception."""
    store, ca = https_store
    rules = write_rules(tmp_path / "rules.json", {HTTPS_BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")]})
    home = tmp_path / "home"  # mitmproxy's confdir: the default ~/.mitmproxy, there
    proxy = BackoriginRun("regular", rules, tmp_path, args=[
        "--mode", "regular", "--store", store.https_endpoint, "--set", f"ssl_verify_upstream_trusted_ca={ca.ca_cert}",
    ], env={"HOME": str(home), "AWS_CA_BUNDLE": str(ca.ca_cert), "AWS_ACCESS_KEY_ID": KEYS[0],
            "AWS_SECRET_ACCESS_KEY": KEYS[1]}).start()
    size = 20 * 2**20 + 4321  # three ranged part GETs by the CLI's transfer manager
    key = f"sized/{size}/{unique}.bin"
    out = tmp_path / "out.bin"
    cli_home = tmp_path / "cli-home"
    try:
        assert proxy.client_ca == home / ".mitmproxy" / "mitmproxy-ca-cert.pem"
        wait_for(proxy.client_ca.exists, within=10)  # mitmproxy writes it just after it starts listening
        done = subprocess.run(
            [str(VENV_BIN / "aws"), "--endpoint-url", store.https_endpoint, "s3", "cp", f"s3://{HTTPS_BUCKET}/{key}", str(out)],
            env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(cli_home), "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1],
                 "AWS_CONFIG_FILE": str(cli_home / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(cli_home / "none"),
                 "HTTPS_PROXY": proxy.url, "NO_PROXY": "", "AWS_CA_BUNDLE": str(proxy.client_ca)},
            capture_output=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()
        with open(out, "rb") as written:
            assert sha256_of(iter(lambda: written.read(2**20), b"")) == sha256_of(sized_body(size))
        assert origin.count("GET", unique) == 1 and origin.count("HEAD", unique) == 0
        s3 = boto3.client("s3", endpoint_url=store.https_endpoint, region_name="us-east-1", verify=str(ca.ca_cert),
                          aws_access_key_id=KEYS[0], aws_secret_access_key=KEYS[1])
        assert wait_stored(s3, HTTPS_BUCKET, key, within=30)["ContentLength"] == size  # a signed write-back, over HTTPS
        # the README's boto3 client for this mode: the proxy in Config(proxies=...), its CA in verify=
        through_proxy = boto3.client("s3", endpoint_url=store.https_endpoint, region_name="us-east-1",
                                     aws_access_key_id=KEYS[0], aws_secret_access_key=KEYS[1],
                                     verify=str(proxy.client_ca), config=Config(proxies={"https": proxy.url}))
        small = f"ok/{unique}"
        assert through_proxy.get_object(Bucket=HTTPS_BUCKET, Key=small)["Body"].read() == body_for(f"/dir1/{small}")
        assert origin.count("GET", small) == 1
    finally:
        assert proxy.stop() == 0
    log = proxy.log()  # the CLI's requests, decrypted by the proxy (mitmdump shortens the URLs)
    assert f"HEAD {store.https_endpoint}/{HTTPS_BUCKET}/sized/" in log and f"GET {store.https_endpoint}/{HTTPS_BUCKET}/sized/" in log


# one spool per proxy --------------------------------------------------------------------------


def pending_keys(spool: Path) -> list[str]:
    return sorted(json.loads(manifest.read_text())["key"] for manifest in spool.glob("*.json"))


def test_two_runs_on_one_machine_keep_separate_spools(tmp_path, store, s3, origin, rules_file, unique):
    """Two `backorigin run`s, one user, one confdir, spool options left alone; their write-backs
    are held (backorigin_s3_endpoint names a port nothing listens on) so that each spool still
    holds them when both stop. Each holds its own; a third proxy given the first's spool is
    refused; a restart of the first resumes its own write-back only and reports the other's."""
    home = tmp_path / "home"
    nowhere = f"http://127.0.0.1:{free_ports(1)[0]}"
    held = ["--set", f"backorigin_s3_endpoint={nowhere}", "--set", "backorigin_shutdown_timeout=1"]

    def run(name: str, port: int, *args: str) -> BackoriginRun:
        return BackoriginRun(f"reverse:{store.endpoint}", rules_file, tmp_path / name, port=port,
                             args=["--store", store.endpoint, *args], env={"HOME": str(home)})

    one, two = run("one", free_ports(1)[0], *held).start(), run("two", free_ports(1)[0], *held).start()
    keys = {"one": f"ok/{unique}-one", "two": f"ok/{unique}-two"}
    try:
        assert one.spool.parent == two.spool.parent == home / ".mitmproxy" / "backorigin-spools"
        assert one.spool != two.spool
        for proxy, key in ((one, keys["one"]), (two, keys["two"])):
            assert http_get(f"{proxy.url}/mirror-bucket/{key}")[2] == body_for(f"/dir1/{key}")
        # the manifest is spooled before the answer's last byte: each spool holds its own write-back
        assert pending_keys(one.spool) == [keys["one"]] and pending_keys(two.spool) == [keys["two"]]
        third = run("third", free_ports(1)[0], "--set", f"backorigin_spool_dir={one.spool}")
        with pytest.raises(RuntimeError, match="exited with 1"):
            third.start()
        assert f"{one.spool} is in use by another proxy (pid {one.pid} " in third.log()
    finally:
        for proxy in (one, two):
            assert proxy.stop() == 0
    assert "1 write-back(s) still pending" in one.log() and "1 write-back(s) still pending" in two.log()

    again = run("again", one.port, "--set", f"backorigin_s3_endpoint={store.endpoint}").start()
    try:
        assert again.spool == one.spool  # the same listen address: the same spool
        wait_stored(s3, "mirror-bucket", keys["one"])
        assert "resuming 1 spooled write-back(s)" in again.log()
        assert f"{two.spool} (another proxy's spool) holds 1 pending write-back(s) and no running proxy uses it" in again.log()
    finally:
        assert again.stop() == 0
    assert pending_keys(one.spool) == [] and pending_keys(two.spool) == [keys["two"]]
    assert stored(s3, "mirror-bucket", keys["two"]) is None
    assert origin.count("GET", unique) == 2  # one per key: the restart served its spooled body, fetched nothing
