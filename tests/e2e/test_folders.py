"""Folders are not objects (issue 25, items 4 and 5), against a web-server origin (nginx serving a
folder tree, tests/fronts.py) and SeaweedFS.

- A key that is a folder at the origin (nginx answers a 301 to the same URL plus '/') is a 404
  NoSuchKey for GET and HEAD, with the reason in the log; pyarrow's dataset discovery and s3fs
  (`info`, `exists`, `ls`) through the proxy give what they give straight to the store, whether the
  folder's files are only at the origin or in the store too.
- A key that is a folder in the store (`clash` while `clash/inner` exists: SeaweedFS refuses to
  create it, 412 with no object there) is a write-back refused, counted and remembered as such:
  later GETs are served from the origin without another write-back.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3fs
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from pyarrow import fs as pafs

from backorigin.tools.embedded_store import free_ports
from tests.clients import Target, boto3_client
from tests.e2e.test_metrics import scrape
from tests.fronts import web_origin
from tests.support import Mitmdump, mirror_rule, wait_for, write_rules

BUCKET = "folders-bucket"
TABLES = {"only-at-origin": (0, 1), "also-in-store": (2, 3)}  # folder -> the parts it holds


def _part(number: int) -> bytes:
    table = pa.table({"part": [number] * 3, "row": [0, 1, 2], "name": [f"p{number}r{i}" for i in range(3)]})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory, store):
    """nginx serving data/ (two parquet folders and a file `clash`), the store holding one of the
    folders and `clash/inner`, and the proxy (with metrics) mirroring data/."""
    workdir = tmp_path_factory.mktemp("folders")
    root = workdir / "www"
    files = {f"{folder}/part-{n}.parquet": _part(n) for folder, parts in TABLES.items() for n in parts}
    files["clash"] = b"a file at the origin, a folder in the store\n" * 100
    for name, body in files.items():
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / name).write_bytes(body)
    store.create_buckets([BUCKET])
    s3 = store.client()
    for name, body in files.items():
        if name.startswith("also-in-store/"):
            s3.put_object(Bucket=BUCKET, Key=name, Body=body)
    s3.put_object(Bucket=BUCKET, Key="clash/inner", Body=b"the store's own")
    with web_origin(workdir / "nginx", root) as origin:
        rules = write_rules(workdir / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.url}/data/")]})
        metrics = free_ports(1)[0]
        proxy = Mitmdump(f"reverse:{store.endpoint}", rules, workdir / "proxy",
                         {"backorigin_metrics_port": str(metrics), "backorigin_origin_timeout": "5"}).start()
        try:
            yield proxy, origin, metrics, files
        finally:
            proxy.stop()


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a library call gives: ('ok', value) or ('raises', the exception's type)."""
    try:
        return "ok", call()
    except Exception as e:  # the type is what a caller sees and branches on
        return "raises", type(e).__name__


@pytest.mark.parametrize("method", ["get_object", "head_object"])
def test_a_folder_at_the_origin_is_no_such_key(world, store, method):
    proxy, origin, _, _ = world
    client = boto3_client(Target(proxy.url, "anonymous", "anonymous"), signature_version=UNSIGNED)
    with pytest.raises(ClientError) as missing:
        getattr(client, method)(Bucket=BUCKET, Key="only-at-origin")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    if method == "get_object":
        assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    assert ("GET", "/data/only-at-origin", 301) in origin.requests()
    assert ("GET", "/data/only-at-origin/", 403) not in origin.requests()  # the redirect is not followed
    assert "the origin says the key is a folder (301 to /data/only-at-origin/)" in proxy.log()


@pytest.mark.parametrize("folder", sorted(TABLES))
def test_s3fs_sees_through_the_proxy_what_it_sees_in_the_store(world, store, folder):
    proxy = world[0]

    def view(endpoint: str) -> list[tuple[str, Any]]:
        fs = s3fs.S3FileSystem(anon=True, endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
        path = f"{BUCKET}/{folder}"
        return [_outcome(lambda: fs.exists(path)), _outcome(lambda: _plain(fs.info(path))),
                _outcome(lambda: sorted(fs.ls(path))), _outcome(lambda: fs.isdir(path))]

    direct = view(store.endpoint)
    assert view(proxy.url) == direct
    if folder == "also-in-store":
        assert direct[0] == ("ok", True) and direct[3] == ("ok", True)
    else:
        assert direct[0] == ("ok", False)


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    return {key: info[key] for key in ("name", "type", "size")}


@pytest.mark.parametrize("folder", sorted(TABLES))
def test_pyarrow_dataset_discovery_through_the_proxy_as_in_the_store(world, store, folder):
    proxy = world[0]

    def view(endpoint: str) -> list[tuple[str, Any]]:
        host = endpoint.removeprefix("http://")
        fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", anonymous=True, region="us-east-1")
        path = f"{BUCKET}/{folder}/"
        return [_outcome(lambda: ds.dataset(path, filesystem=fs, format="parquet").to_table().sort_by("name")),
                _outcome(lambda: pq.read_table(path, filesystem=fs).sort_by("name")),
                _outcome(lambda: fs.get_file_info(f"{BUCKET}/{folder}").type)]

    direct = view(store.endpoint)
    through = view(proxy.url)
    assert [kind for kind, _ in through] == [kind for kind, _ in direct]
    for (_, mine), (_, theirs) in zip(through, direct, strict=True):
        assert mine.equals(theirs) if isinstance(mine, pa.Table) else mine == theirs
    if folder == "also-in-store":
        assert direct[0][0] == "ok" and direct[0][1].num_rows == 6


def test_a_key_the_store_refuses_is_served_from_the_origin_and_never_written_again(world, store):
    proxy, origin, metrics, files = world
    client = boto3_client(Target(proxy.url, "anonymous", "anonymous"), signature_version=UNSIGNED)
    expected = hashlib.sha256(files["clash"]).hexdigest()

    def refused() -> float:
        return scrape(metrics).get(("backorigin_writebacks_total", (("outcome", "refused"),)), 0)

    for attempt in range(3):
        body = client.get_object(Bucket=BUCKET, Key="clash")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == expected
        if attempt == 0:
            wait_for(lambda: refused() == 1)
    assert origin.count("GET", "/data/clash") == 3  # each GET served from the origin, none joined a write-back
    after = scrape(metrics)
    assert refused() == 1
    assert after.get(("backorigin_writebacks_total", (("outcome", "exists"),)), 0) == 0
    assert store.client().get_object(Bucket=BUCKET, Key="clash/inner")["Body"].read() == b"the store's own"
    log = proxy.log()
    assert "write-back of s3://folders-bucket/clash refused" in log and "holds no object there" in log
    assert log.count("is served from the origin without storing: the store refused it before") == 2
