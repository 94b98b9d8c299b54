"""Write-through under taddons: the writes a store's 2xx answer journals (by the time the response
hook is done, before mitmproxy sends the answer), the ones it does not, a DeleteObjects' keys read
as its body and its answer pass, and a journal that cannot be written answered 503. No store or
origin runs: flows carry the store's answers. tests/e2e/test_writethrough.py runs it all for real."""

from __future__ import annotations

import asyncio
import json
import sys
import threading

import pytest
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook, HttpResponseHook
from mitmproxy.test import tflow, tutils

from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import error_code_of
from tests.addon.conftest import NOBODY
from tests.support import mirror_rule

AUTH = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "OLDKEY", "AccessKeySecret": "old-secret"}


@pytest.fixture
async def wt(tctx, addon, tmp_path):
    rules = tmp_path / "wt-rules.json"
    rule = mirror_rule(1, f"http://127.0.0.1:{NOBODY}/old/", MirrorAuth=AUTH)
    rules.write_text(json.dumps({"Buckets": [{"Name": "wt", "WriteThrough": True, "RoutingRules": [rule]},
                                             {"Name": "plain", "RoutingRules": [rule]}]}))
    tctx.configure(addon, backorigin_rules=str(rules))
    # the hooks are what these tests are about: the worker's place is taken by a process that reads
    # its input and leaves when it ends (tests/e2e/test_writethrough.py runs the real worker)
    addon.writethrough.supervisor.command = lambda: [sys.executable, "-c", "import sys; sys.stdin.read()"]
    yield addon
    await addon.writethrough.supervisor.drain(0.1)


def write(method: str, path: str, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = (), content: bytes = b"",
          answer: bytes = b""):
    """A write as a store at NOBODY answered it."""
    return tflow.tflow(req=tutils.treq(host="127.0.0.1", port=NOBODY, method=method.encode(), path=path.encode(),
                                       headers=((b"host", f"127.0.0.1:{NOBODY}".encode()), *headers), content=content),
                       resp=tutils.tresp(status_code=status, content=answer))


def journaled(addon) -> list[tuple[str, list[str]]]:
    return [(entry.write, [change.key for change in entry.changes]) for entry in addon.writethrough.supervisor.journal.entries()]


async def test_each_write_the_store_accepted_is_journaled_with_its_origin_copy(tctx, wt):
    flows = [
        write("PUT", "/wt/put"),
        write("PUT", "/wt/copied", headers=((b"x-amz-copy-source", b"/wt/put"),)),
        write("POST", "/wt/parts?uploadId=7"),
        write("DELETE", "/wt/gone", 204),
        write("DELETE", "/wt/version?versionId=3", 204),
    ]
    for flow in flows:
        await tctx.cycle(wt, flow)
        assert flow.response.status_code in (200, 204)
    assert journaled(wt) == [("create", ["put"]), ("create", ["copied"]), ("create", ["parts"]), ("delete", ["gone"]),
                             ("delete-version", ["version"])]
    (change,) = next(wt.writethrough.supervisor.journal.entries()).changes
    assert (change.store, change.origin.where, change.origin.access_key_id) == (
        f"http://127.0.0.1:{NOBODY}", f"http://127.0.0.1:{NOBODY}/old/put", "OLDKEY")
    assert wt.writethrough.writing(flows[0], ObjectRef("wt", "put")) and not wt.writethrough.writing(flows[0], ObjectRef("wt", "x"))
    assert wt.writethrough.supervisor.pending == 5


async def test_refused_and_other_calls_are_not_journaled(tctx, wt):
    flows = [
        write("PUT", "/wt/refused", 403),
        write("DELETE", "/wt/refused", 403),
        write("PUT", "/plain/not-written-through"),
        write("PUT", "/wt/tagged?tagging"),
        write("PUT", "/wt/part?partNumber=1&uploadId=7"),
        write("POST", "/wt/upload?uploads"),
        write("GET", "/wt/read"),
    ]
    replayed = write("PUT", "/wt/replayed")
    replayed.live = False
    for flow in [*flows, replayed]:
        await tctx.cycle(wt, flow)
    assert journaled(wt) == [] and wt.writethrough.supervisor.process.started is False


async def test_a_delete_objects_journals_the_keys_its_answer_did_not_refuse(tctx, wt):
    """The body and the answer pass through the stream functions the hooks install, as mitmproxy
    streams them; the answer's end goes out chunked, after the response hook."""
    body = b"<Delete>" + b"".join(f"<Object><Key>{k}</Key></Object>".encode() for k in ("a", "b", "c", "a")) + b"</Delete>"
    answer = (b"<DeleteResult><Deleted><Key>a</Key></Deleted><Error><Key>b</Key><Code>AccessDenied</Code></Error>"
              b"<Deleted><Key>c</Key></Deleted></DeleteResult>")
    flow = write("POST", "/wt?delete", content=body, answer=answer)
    response, flow.response = flow.response, None
    await tctx.master.addons.invoke_addon(wt, HttpRequestHeadersHook(flow))
    assert callable(flow.request.stream)
    for chunk in (body[:20], body[20:], b""):
        flow.request.stream(chunk)
    await tctx.master.addons.invoke_addon(wt, HttpRequestHook(flow))
    flow.response = response
    await tctx.master.addons.invoke_addon(wt, HttpResponseHeadersHook(flow))
    assert callable(response.stream) and response.headers["transfer-encoding"] == "chunked"
    for chunk in (answer, b""):
        response.stream(chunk)
    await tctx.master.addons.invoke_addon(wt, HttpResponseHook(flow))
    assert journaled(wt) == [("delete-many", ["a", "c"])]


async def test_a_write_that_cannot_be_journaled_is_answered_503_to_be_retried(tctx, wt, tmp_path):
    journal = wt.writethrough.supervisor.journal.directory
    journal.rename(tmp_path / "moved")
    journal.write_bytes(b"")  # a file where the folder was: every entry fails, as on a full disk
    flow = write("PUT", "/wt/unpromised")
    await tctx.cycle(wt, flow)
    assert flow.response.status_code == 503 and flow.response.headers["retry-after"] == "1"
    assert error_code_of(flow.response.raw_content) == "ServiceUnavailable"
    journal.unlink()
    (tmp_path / "moved").rename(journal)


async def test_the_answer_waits_for_its_journal_entry(tctx, wt):
    """mitmproxy sends the answer once the response hook is done: while the entry is being written
    (a slow disk, held here), the hook is not."""
    journal, gate, writing = wt.writethrough.supervisor.journal, threading.Event(), threading.Event()
    add = journal.add

    def slow_add(*arguments):
        writing.set()
        gate.wait(10)
        return add(*arguments)

    journal.add = slow_add
    flow = write("PUT", "/wt/slow-disk")
    hook = asyncio.ensure_future(tctx.master.addons.invoke_addon(wt, HttpResponseHook(flow)))
    assert await asyncio.to_thread(writing.wait, 10)  # the entry is being written
    assert not hook.done() and journaled(wt) == []
    gate.set()
    await hook
    assert journaled(wt) == [("create", ["slow-disk"])]


async def test_writes_answered_together_share_one_journal_entry(tctx, wt):
    """A group commit: the writes that arrive while an entry is being written go into the next
    one (one file and one sync for all of them), and each is answered once its entry is written."""
    flows = [write("PUT", f"/wt/together-{number}") for number in range(8)]
    await asyncio.gather(*(tctx.cycle(wt, flow) for flow in flows))
    entries = journaled(wt)
    assert sorted(key for _, keys in entries for key in keys) == sorted(f"together-{number}" for number in range(8))
    assert len(entries) < 8
    assert all(flow.response.status_code == 200 for flow in flows)
