"""What the addon decides and answers for flows, under taddons: flows it leaves alone, a miss the
response hook finds (answered from memory, or 503 SlowDown past the whole-answer limit), a
delete marker, a redirect, a loop."""

from __future__ import annotations

import pytest

from backorigin.decision import METADATA_KEY
from backorigin.s3.replies import error_code_of
from tests.addon.conftest import store_answer
from tests.origin_server import body_for


async def test_flows_that_are_not_candidates_are_left_alone(tctx, addon, origin, unique):
    tctx.configure(addon, backorigin_head_on_miss="oss")  # OSS: HEAD needs MirrorAllowHeadObject
    cases = [
        store_answer("mirror-bucket", f"ok/{unique}", method="HEAD"),
        store_answer("mirror-bucket", f"ok/{unique}", code="NoSuchBucket"),
        store_answer("mirror-bucket", f"ok/{unique}", status=500, code="InternalError"),
        store_answer("plain-bucket", f"ok/{unique}"),
    ]
    replayed = store_answer("mirror-bucket", f"ok/{unique}")
    replayed.live = False  # recorded flows never cause origin fetches or uploads
    for flow in [*cases, replayed]:
        before = flow.response.copy()
        await tctx.cycle(addon, flow)
        assert flow.response.status_code == before.status_code
        assert flow.response.content == before.content
    assert origin.requests_for(unique) == []


async def test_a_late_miss_is_answered_from_memory_and_spooled(tctx, addon, origin, unique):
    """A 404 only the response hook sees (the store could not be asked first) is still mirrored."""
    flow = store_answer("mirror-bucket", f"ok/{unique}")
    await tctx.cycle(addon, flow)
    assert flow.response.status_code == 200 and flow.response.raw_content == body_for(f"/dir1/ok/{unique}")
    assert flow.metadata[METADATA_KEY]["outcome"] == "mirrored" and flow.metadata[METADATA_KEY]["writeback"] == "queued"
    assert [upload.where for _, upload in addon.parts.writeback.spool.pending()] == [f"s3://mirror-bucket/ok/{unique}"]
    assert origin.count("GET", unique) == 1
    await addon.done()


async def test_a_late_miss_larger_than_the_whole_answer_limit_gets_slow_down(tctx, addon, origin, unique):
    """A late miss can only be answered from memory: past backorigin_max_inline the client gets
    503 SlowDown with Retry-After (S3 clients retry; the retry is decided in the request hook)."""
    tctx.configure(addon, backorigin_max_inline="64k")
    flow = store_answer("mirror-bucket", f"sized/{256 * 1024}/{unique}")
    await tctx.cycle(addon, flow)
    assert flow.response.status_code == 503 and flow.response.headers["retry-after"] == "1"
    assert error_code_of(flow.response.raw_content) == "SlowDown"
    await addon.done()


async def test_a_delete_marker_never_mirrors(tctx, addon, origin, unique):
    """A versioned bucket's 404 with x-amz-delete-marker: true is a deletion. (SeaweedFS does not
    send the header, so the store's answer is made here.)"""
    flow = store_answer("mirror-bucket", f"ok/{unique}", headers={"x-amz-delete-marker": "true"})
    await tctx.cycle(addon, flow)
    assert flow.response.status_code == 404 and flow.metadata[METADATA_KEY]["outcome"] == "delete-marker"
    assert origin.count("GET", unique) == 0


async def test_an_origin_fetch_that_comes_back_in_is_refused(tctx, addon, unique):
    """The loop marker carries this process's secret (miss.loop), here behind another proxy's token."""
    flow = store_answer("mirror-bucket", f"ok/{unique}")
    flow.response = None
    flow.request.headers["x-backorigin-fetch"] = addon.mirror.origin.marker.value("another-proxys-token")
    await tctx.cycle(addon, flow)
    assert flow.response.status_code == 424 and flow.metadata[METADATA_KEY]["action"] == "loop"


@pytest.mark.parametrize("marker", ["1", "probe", "", "x" * 40])
async def test_a_client_that_sends_the_loop_header_gets_ordinary_service(tctx, addon, origin, unique, marker):
    """Issue 25: `x-backorigin-fetch: 1` got 424 for any GET, in any bucket. Now only the
    process's own secret counts; the store's 404 is mirrored as for anyone else."""
    flow = store_answer("mirror-bucket", f"ok/{unique}")
    flow.request.headers["x-backorigin-fetch"] = marker
    await tctx.cycle(addon, flow)
    assert flow.response.status_code == 200 and flow.metadata[METADATA_KEY]["action"] == "mirror"
    assert origin.count("GET", unique) == 1
    await addon.done()
