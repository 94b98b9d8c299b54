"""A delete the store accepted while the key's write-back was uploading: until the proxy has
undone the write-back (deletes.undoing), GETs and HEADs of the key read as deleted, never as the
write-back the store may hold for a moment; a write of the key through the proxy ends that."""

from __future__ import annotations

import asyncio

import pytest

from backorigin.s3.replies import error_code_of
from tests.addon.conftest import store_answer


def read_of(addon, key: str, method: str = "GET"):
    flow = store_answer("mirror-bucket", key, status=200, code="", method=method)
    flow.response = None  # on its way to the store
    addon.requestheaders(flow)
    return flow


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_key_whose_write_back_is_being_undone_reads_as_deleted_until_it_is(tctx, addon, unique, method):
    flow = read_of(addon, f"ok/{unique}", method)
    key = (addon.context.endpoint(flow.request), "mirror-bucket", f"ok/{unique}")
    undone = asyncio.get_running_loop().create_future()
    undo = asyncio.ensure_future(addon.deletes.undoing.during([key], undone))
    await asyncio.sleep(0)  # the undo starts: a turn of the loop, not a wait for time
    assert addon.request(flow) is None  # answered in the request hook, the store not asked
    assert flow.response is not None and flow.response.status_code == 404
    if method == "GET":
        assert error_code_of(flow.response.raw_content) == "NoSuchKey"
    other = read_of(addon, f"other/{unique}", method)
    addon.deletes.undoing.hide(other, addon.context)
    assert other.response is None, "other keys go to the store"

    undone.set_result(None)
    await undo
    after = read_of(addon, f"ok/{unique}", method)
    addon.deletes.undoing.hide(after, addon.context)
    assert after.response is None, "once undone, the store answers"


async def test_a_write_of_the_key_through_the_proxy_ends_the_hiding(tctx, addon, unique):
    flow = read_of(addon, f"ok/{unique}")
    key = (addon.context.endpoint(flow.request), "mirror-bucket", f"ok/{unique}")
    undone = asyncio.get_running_loop().create_future()
    undo = asyncio.ensure_future(addon.deletes.undoing.during([key, key], undone))  # deleted twice meanwhile
    await asyncio.sleep(0)
    addon.deletes.undoing.written(key)
    addon.deletes.undoing.hide(flow, addon.context)
    assert flow.response is None, "the store's object is the client's own again"
    undone.set_result(None)
    await undo
    assert not addon.deletes.undoing
