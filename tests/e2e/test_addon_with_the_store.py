"""The addon under mitmproxy's own test helpers (taddons, tflow) with the real store behind it:
a miss is mirrored, answered and written back; its HEAD answers as the stored object does; and the store
itself has room for many buckets."""

from __future__ import annotations

import json

import pytest
from mitmproxy.test import taddons, tflow, tutils

from backorigin.addon import BackOrigin
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import error_body
from backorigin.tools.embedded_store import VOLUME_SIZE_MB
from tests.origin_server import body_for
from tests.support import stored


def flow_for(store, bucket: str, key: str, method: str = "GET"):
    host, port = store.endpoint.removeprefix("http://").split(":")
    return tflow.tflow(
        req=tutils.treq(host=host, port=int(port), path=f"/{bucket}/{key}".encode(), method=method.encode(),
                        headers=((b"host", f"{host}:{port}".encode()),)),
        resp=tutils.tresp(status_code=404, content=error_body("NoSuchKey", "m", ObjectRef(bucket, key), "r")),
    )


@pytest.fixture
def tctx(rules_file, tmp_path, store):
    addon = BackOrigin()
    with taddons.context(addon) as context:
        context.configure(addon, backorigin_rules=str(rules_file), backorigin_spool_dir=str(tmp_path / "spool"),
                          backorigin_origin_timeout="5", backorigin_stores=[store.endpoint])
        context.addon = addon
        yield context


async def test_a_miss_is_mirrored_answered_and_written_back(tctx, store, s3, origin, unique):
    flow = flow_for(store, "mirror-bucket", f"ok/{unique}")
    await tctx.cycle(tctx.addon, flow)
    assert flow.response.status_code == 200
    assert flow.response.raw_content == body_for(f"/dir1/ok/{unique}")
    stats = json.loads(tctx.master.commands.call("backorigin.stats"))
    assert stats["misses"] == 1 and stats["mirrored"] == 1
    await tctx.addon.done()  # drains the write-back
    assert stored(s3, "mirror-bucket", f"ok/{unique}")
    assert json.loads(tctx.master.commands.call("backorigin.stats"))["writebacks.stored"] == 1
    assert tctx.master.commands.call("backorigin.pending") == []


async def test_head_of_a_miss_answers_as_the_object_will(tctx, store, s3, origin, unique):
    flow = flow_for(store, "mirror-bucket", f"ok/{unique}", method="HEAD")
    await tctx.cycle(tctx.addon, flow)
    await tctx.addon.done()
    body = body_for(f"/dir1/ok/{unique}")
    assert flow.response.status_code == 200 and flow.response.raw_content == b""
    assert flow.response.headers["content-length"] == str(len(body))
    assert flow.response.headers["etag"] == stored(s3, "mirror-bucket", f"ok/{unique}")["ETag"]


def test_the_store_sizes_its_volumes_itself_not_from_the_free_disk(store):
    """Each bucket takes a volume of SeaweedFS's. Left to itself, `weed mini` sizes volumes from the
    free disk (1 GiB each with 15 GB free) and allows free disk / size of them: a session's store
    ran out after 16 buckets (InternalError on every PutObject to a new one)."""
    options = dict(line.split("=", 1) for line in (store.data_dir / "mini.options").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    assert options["master.volumeSizeLimitMB"] == str(VOLUME_SIZE_MB) == "64"
