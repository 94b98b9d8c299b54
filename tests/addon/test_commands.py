"""The backorigin.* commands, at mitmproxy's command line under taddons."""

from __future__ import annotations

import json

from tests.addon.conftest import store_answer


def test_explain_says_which_rule_and_what_it_builds(tctx, origin):
    call = tctx.master.commands.call
    text = call("backorigin.explain", "http://proxy:8080/mirror-bucket/order/a%20b.txt")
    assert "missing object (404 NoSuchKey): RuleNumber 4 Mirror: GET " + f"{origin.base}/dir2/order/a%20b.txt" in text
    assert "existing object (200): no rule matches; the store answers" in text
    assert "has no rules" in call("backorigin.explain", "http://proxy/plain-bucket/x")
    assert "names no object" in call("backorigin.explain", "http://proxy/")


async def test_stats_and_pending_after_a_miss(tctx, addon, origin, unique):
    flow = store_answer("mirror-bucket", f"ok/{unique}")
    await tctx.cycle(addon, flow)
    stats = json.loads(tctx.master.commands.call("backorigin.stats"))
    assert stats["misses"] == 1 and stats["mirrored"] == 1 and stats["bytes_from_origin"] == len(flow.response.content)
    assert stats["writebacks.pending"] == 1
    assert tctx.master.commands.call("backorigin.pending") == [f"s3://mirror-bucket/ok/{unique} ({len(flow.response.content)} bytes)"]
    await addon.done()


def test_commands_list_and_clear_tombstones(tctx, addon, unique):
    call = tctx.master.commands.call
    for key in (f"a/{unique}-1", f"a/{unique}-2", f"b/{unique}"):
        addon.deletes.tombstones.add("mirror-bucket", key)
    listed = call("backorigin.tombstones")
    assert f"s3://mirror-bucket/a/{unique}-1" in listed and len([u for u in listed if unique in u]) == 3
    assert call("backorigin.tombstones.clear", "s3://mirror-bucket/a/*") == 2
    assert call("backorigin.tombstones.clear", f"s3://mirror-bucket/b/{unique}") == 1
    assert [u for u in call("backorigin.tombstones") if unique in u] == []
