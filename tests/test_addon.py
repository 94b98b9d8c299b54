"""The addon class under mitmproxy's own test helpers (taddons/tflow), with the real
scripted origin and the real store behind it."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from backorigin.addon import BackOrigin, parse_size
from backorigin.s3 import addressing as s3
from tests.origin_server import body_for
from tests.support import stored


def flow_for(store, bucket: str, key: str, status: int = 404, code: str = "NoSuchKey", method: str = "GET"):
    host, port = store.endpoint.removeprefix("http://").split(":")
    flow = tflow.tflow(
        req=tutils.treq(host=host, port=int(port), path=f"/{bucket}/{key}".encode(), method=method.encode()),
        resp=tutils.tresp(status_code=status, content=s3.error_body(code, "m", s3.ObjectRef(bucket, key), "r")),
    )
    return flow


@pytest.fixture
def addon():
    return BackOrigin()


@pytest.fixture
def options(rules_file, tmp_path):
    return {"backorigin_rules": str(rules_file), "backorigin_spool_dir": str(tmp_path / "spool")}


def test_bad_options_are_refused(addon, options, rules_file, tmp_path):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **options)
        with pytest.raises(exceptions.OptionsError, match="backorigin_origin_timeout: 'soon' is not a positive"):
            tctx.configure(addon, backorigin_origin_timeout="soon")
        with pytest.raises(exceptions.OptionsError, match="outside 1..20"):
            tctx.configure(addon, backorigin_max_rules=21)
        with pytest.raises(exceptions.OptionsError, match="backorigin_max_inline: 'big' is not a size"):
            tctx.configure(addon, backorigin_max_inline="big")
        with pytest.raises(exceptions.OptionsError, match="backorigin_origin_read_timeout: '-1' is not a positive"):
            tctx.configure(addon, backorigin_origin_read_timeout="-1")
        with pytest.raises(exceptions.OptionsError, match="cannot change while running"):
            tctx.configure(addon, backorigin_spool_dir=str(tmp_path / "elsewhere"))
        with pytest.raises(exceptions.OptionsError, match="backorigin_head_on_miss: 'maybe' is neither"):
            tctx.configure(addon, backorigin_head_on_miss="maybe")
        with pytest.raises(exceptions.OptionsError, match="cannot read the rules file"):
            tctx.configure(addon, backorigin_rules=str(tmp_path / "missing.json"))
        # a refused change keeps what was in force
        assert addon.rulebook.source == str(rules_file)


async def test_miss_is_mirrored_and_written_back(addon, options, store, s3, origin, unique):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **options, backorigin_origin_timeout="5")
        flow = flow_for(store, "mirror-bucket", f"ok/{unique}")
        await tctx.cycle(addon, flow)
        assert flow.response.status_code == 200
        assert flow.response.raw_content == body_for(f"/dir1/ok/{unique}")
        await addon.done()  # drains the write-back
    assert stored(s3, "mirror-bucket", f"ok/{unique}")


async def test_head_of_a_miss_answers_as_the_object_will(addon, options, store, s3, origin, unique):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **options, backorigin_origin_timeout="5")
        flow = flow_for(store, "mirror-bucket", f"ok/{unique}", method="HEAD")
        await tctx.cycle(addon, flow)
        await addon.done()
    body = body_for(f"/dir1/ok/{unique}")
    assert flow.response.status_code == 200 and flow.response.raw_content == b""
    assert flow.response.headers["content-length"] == str(len(body))
    assert flow.response.headers["etag"] == stored(s3, "mirror-bucket", f"ok/{unique}")["ETag"]


async def test_flows_that_are_not_candidates_are_left_alone(addon, options, store, origin, unique):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **options, backorigin_head_on_miss="oss")  # OSS: HEAD needs MirrorAllowHeadObject
        cases = [
            flow_for(store, "mirror-bucket", f"ok/{unique}", method="HEAD"),
            flow_for(store, "mirror-bucket", f"ok/{unique}", code="NoSuchBucket"),
            flow_for(store, "mirror-bucket", f"ok/{unique}", status=500, code="InternalError"),
            flow_for(store, "plain-bucket", f"ok/{unique}"),
        ]
        replayed = flow_for(store, "mirror-bucket", f"ok/{unique}")
        replayed.live = False  # recorded flows never cause origin fetches or uploads
        for flow in [*cases, replayed]:
            before = flow.response.copy()
            await tctx.cycle(addon, flow)
            assert flow.response.status_code == before.status_code
            assert flow.response.content == before.content
    assert origin.requests_for(unique) == []


@pytest.mark.parametrize(
    "text, size", [("65536", 65536), ("512k", 512 * 1024), ("64m", 64 * 1024**2), ("1G", 1024**3), ("2gib", 2 * 1024**3)]
)
def test_sizes(text, size):
    assert parse_size("o", text) == size
