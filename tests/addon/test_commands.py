"""The backorigin.* commands, at mitmproxy's command line under taddons."""

from __future__ import annotations

import asyncio
import json
import logging

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


async def test_commands_list_and_clear_tombstones_in_the_background(tctx, addon, unique, caplog):
    call = tctx.master.commands.call
    commands = next(child for child in addon.addons if hasattr(child, "background"))
    caplog.set_level(logging.INFO, "backorigin")

    async def logged(*args: str) -> str:
        caplog.clear()
        assert "the event log" in call(*args)  # answered at once: the work runs in a thread
        await asyncio.gather(*commands.background)
        return caplog.text

    for key in (f"a/{unique}-1", f"a/{unique}-2", f"b/{unique}"):
        addon.parts.tombstones.tombstones.add("mirror-bucket", key)
    listed = await logged("backorigin.tombstones")
    assert f"s3://mirror-bucket/a/{unique}-1" in listed and listed.count(unique) == 3
    assert (await logged("backorigin.tombstones", "s3://mirror-bucket/a/*")).count(unique) == 2
    assert "cleared under s3://mirror-bucket/a/*: 2" in await logged("backorigin.tombstones.clear", "s3://mirror-bucket/a/*")
    assert "cleared under" in await logged("backorigin.tombstones.clear", f"s3://mirror-bucket/b/{unique}")
    assert unique not in await logged("backorigin.tombstones")
