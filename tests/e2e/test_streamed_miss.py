"""A miss whose ETag is known before its body (an origin ETag that is an MD5, as S3 sends; a
Content-MD5) is answered from its first byte, with that ETag; one whose ETag is not (nginx's
own) is answered once whole, so that it carries its ETag (issue 28 item 7, docs/miss.md).

Real mitmdump with the addon in front of a SigV4 SeaweedFS; nginx as the origin, sending 24 MiB
at a limited rate (about 3 s), whose own access log counts the GETs; real clients whose files are
checked by sha256: `aws s3api get-object` and boto3 get_object GET first and so read the stream;
`aws s3 cp` and `rclone copyto` HEAD first (a HEAD waits for the whole body), then read the same
fill (rclone checks the file against the MD5 ETag; `rclone --s3-no-head-object` is no GET-first
client: without its HEAD it takes a key for a folder). An origin that breaks mid-body after the
answer started leaves every client with an error, never exit 0.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.services.processes import Processes
from tests.clients import (
    Outcome,
    Target,
    aws_cp_file,
    aws_get_object,
    boto3_get_object,
    curl,
    presigned_url,
    rclone_copyto,
    sized_sha256,
    stored_sha256,
    urllib_get,
)
from tests.modes_support import ModeMitmdump
from tests.nginx_origin import NginxOrigin, nginx_processes, start_origin
from tests.origin_server import ScriptedOrigin, sized_md5
from tests.support import mirror_rule, running_store, stored, wait_stored, write_rules

BUCKET = "streamed-bucket"  # mirrors nginx
BROKEN_BUCKET = "streamed-broken"  # mirrors the scripted origin
KEYS = ("streamkey", "streamsecret")
ENV = {"AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}
MiB = 1 << 20
SIZE = 24 * MiB
Download = Callable[[Target, str, str, Path], Outcome]
RATE = "8m"  # nginx's limit_rate: the body takes about 3 s to arrive


@pytest.fixture(scope="module")
def processes() -> Iterator[Processes]:
    yield from nginx_processes()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, processes) -> NginxOrigin:
    """/etag/<key>: the body with its MD5 as the ETag; /md5/<key>: with a Content-MD5 and no ETag;
    /plain/<key>: nginx's own ETag (not an MD5). Each sent at RATE."""
    md5 = sized_md5(SIZE)
    content_md5 = base64.b64encode(bytes.fromhex(md5)).decode()
    return start_origin(processes, tmp_path_factory.mktemp("streamed-origin"), SIZE, f"""
        limit_rate {RATE};
        location /etag/ {{ etag off; add_header ETag '"{md5}"'; try_files /body.bin =404; }}
        location /md5/ {{ etag off; add_header Content-MD5 '{content_md5}'; try_files /body.bin =404; }}
        location /plain/ {{ try_files /body.bin =404; }}""")


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedOrigin]:
    origin = ScriptedOrigin().start()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("streamed-store"), [BUCKET, BROKEN_BUCKET], KEYS) as store:
        yield store


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, store, origin, scripted) -> Iterator[ModeMitmdump]:
    """The README's reverse proxy with the default options."""
    workdir = tmp_path_factory.mktemp("streamed-proxy")
    rules = write_rules(workdir / "rules.json", {BUCKET: [mirror_rule(1, origin.base)],
                                                 BROKEN_BUCKET: [mirror_rule(1, f"{scripted.base}/dir1/")]})
    proxy = ModeMitmdump(f"reverse:{store.endpoint}", rules, workdir, {"keep_host_header": "true"}, env=ENV).start()
    yield proxy
    assert proxy.stop() == 0


@dataclass(frozen=True)
class Timed:
    status: int
    etag: str | None
    first_byte_at: float  # time.time() of the first body byte
    sha256: str


def timed_get(url: str) -> Timed:
    """One GET of a presigned URL, read in pieces: when its first body byte came."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        answer = connection.getresponse()
        digest = hashlib.sha256(answer.read(1))
        first_byte_at = time.time()
        while piece := answer.read(1 << 20):
            digest.update(piece)
        return Timed(answer.status, answer.getheader("etag"), first_byte_at, digest.hexdigest())
    finally:
        connection.close()


def ok(outcome: Outcome) -> tuple[int, bool]:
    return outcome.returncode, outcome.sha256 == sized_sha256(SIZE)


@pytest.mark.parametrize("location", ["etag", "md5"])
def test_a_miss_whose_etag_is_known_streams_from_its_first_byte(proxy, store, origin, tmp_path, unique, location):
    """A timed GET and real clients at once, on one new key. The first byte arrives before the
    origin has sent its last (nginx's log says when), with the ETag the object will have; every
    client writes the right bytes; the origin was asked once."""
    key = f"{location}/{unique}.bin"
    target = Target(proxy.url, *KEYS)
    clients: dict[str, Download] = {"aws s3api get-object": aws_get_object, "boto3 get_object": boto3_get_object,
                                    "rclone copyto": rclone_copyto, "aws s3 cp": aws_cp_file}
    with ThreadPoolExecutor(1 + len(clients)) as pool:
        timed = pool.submit(timed_get, presigned_url(target, BUCKET, key))
        outcomes = {name: pool.submit(client, target, BUCKET, key, tmp_path / str(n))
                    for n, (name, client) in enumerate(clients.items())}
        streamed = timed.result()
        results = {name: ok(outcome.result()) for name, outcome in outcomes.items()}
    assert results == {name: (0, True) for name in clients}, {n: o.result().stderr for n, o in outcomes.items()}
    assert (streamed.status, streamed.etag, streamed.sha256) == (200, f'"{sized_md5(SIZE)}"', sized_sha256(SIZE))
    s3 = store.client()
    wait_stored(s3, BUCKET, key, within=60)
    assert stored_sha256(s3, BUCKET, key) == sized_sha256(SIZE)
    assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == f'"{sized_md5(SIZE)}"'
    [origin_done] = origin.gets(f"/{key}")
    assert streamed.first_byte_at < origin_done, "the first byte waited for the whole body"


def test_a_miss_whose_etag_is_unknown_is_answered_whole_with_it(proxy, store, origin, tmp_path, unique):
    """nginx's ETag is not an MD5: the default answer waits for the whole body and carries the
    ETag the store will give it."""
    key = f"plain/{unique}.bin"
    answer = timed_get(presigned_url(Target(proxy.url, *KEYS), BUCKET, key))
    assert (answer.status, answer.sha256) == (200, sized_sha256(SIZE))
    s3 = store.client()
    wait_stored(s3, BUCKET, key, within=60)
    assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == answer.etag
    [origin_done] = origin.gets(f"/{key}")
    assert answer.first_byte_at > origin_done


def test_a_streamed_miss_that_breaks_mid_body_fails_every_client(proxy, store, scripted, tmp_path, unique):
    """The origin announces 24 MiB with its MD5 as the ETag, sends half and hangs up: the answer
    has started (curl sees 200), so it cannot become a 424; every client that GETs first fails,
    none exits 0, and nothing is stored. `aws s3 cp` HEADs first: its HEAD waits and gets 424.
    One origin GET per client (each asks once). (rclone is left out: a HEAD that fails makes its
    copyto take the key for a folder, and exit 0 having written nothing, whatever the proxy streams.)"""
    clients: dict[str, Download] = {"aws s3api get-object": aws_get_object, "boto3 get_object": boto3_get_object,
                                    "curl": curl, "urllib": urllib_get, "aws s3 cp": aws_cp_file}
    keys = {name: f"shortsized/{SIZE}/{unique}-{n}.md5etag" for n, name in enumerate(clients)}
    target = Target(proxy.url, *KEYS)
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = {name: pool.submit(client, target, BROKEN_BUCKET, keys[name], tmp_path / str(n))
                   for n, (name, client) in enumerate(clients.items())}
        outcomes = {name: future.result() for name, future in futures.items()}
    assert {name: outcome.returncode != 0 for name, outcome in outcomes.items()} == {name: True for name in clients}, (
        {name: (outcome.returncode, outcome.size, outcome.stderr) for name, outcome in outcomes.items()})
    assert outcomes["curl"].status == 200, "the answer had started streaming before the origin broke off"
    s3 = store.client()
    for name, key in keys.items():
        assert scripted.count("GET", key) == 1, name
        assert stored(s3, BROKEN_BUCKET, key) is None, name
