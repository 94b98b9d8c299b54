"""miss.failedheads: which listings a failed HEAD turns into its failure, and which it leaves alone."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from backorigin.miss.failedheads import FailedHeads, is_empty_listing
from backorigin.s3.addressing import ObjectRef

STORE = "http://store:8333"
EMPTY = b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name></ListBucketResult>'
WITH_OBJECT = EMPTY.replace(b"</ListBucketResult>", b"<Contents><Key>dir/k/x</Key></Contents></ListBucketResult>")
WITH_PREFIX = EMPTY.replace(b"</ListBucketResult>", b"<CommonPrefixes><Prefix>dir/k/a/</Prefix></CommonPrefixes></ListBucketResult>")


def head(status: int) -> http.HTTPFlow:
    return tflow.tflow(req=tutils.treq(method=b"HEAD", path=b"/b/dir/k"), resp=tutils.tresp(status_code=status))


def listing(query: str, body: bytes = EMPTY, status: int = 200) -> http.HTTPFlow:
    return tflow.tflow(req=tutils.treq(method=b"GET", path=f"/b?{query}".encode()),
                       resp=tutils.tresp(status_code=status, content=body))


def failed_heads(*heads: http.HTTPFlow) -> FailedHeads:
    remembered = FailedHeads(lambda request: STORE)
    for flow in heads:
        remembered.note(flow, ObjectRef("b", "dir/k"), "origin 500")
    return remembered


def test_the_empty_listing_of_a_failed_heads_folder_gets_its_424():
    flow = listing("delimiter=%2F&max-keys=1000&prefix=dir%2Fk%2F")
    failed_heads(head(424)).on_listing(flow, "b")
    assert flow.response is not None and flow.response.status_code == 424
    body = flow.response.content or b""
    assert b"<Code>MirrorFailed</Code>" in body and b"<Key>dir/k</Key>" in body and b"origin 500" in body


def test_a_busy_head_gives_its_503():
    flow = listing("list-type=2&delimiter=%2F&prefix=dir%2Fk%2F")
    failed_heads(head(503)).on_listing(flow, "b")
    assert flow.response is not None and flow.response.status_code == 503
    assert flow.response.headers["retry-after"] == "1"


@pytest.mark.parametrize("flow", [
    listing("delimiter=%2F&prefix=dir%2Fk%2F", WITH_OBJECT),  # k/ is a folder
    listing("delimiter=%2F&prefix=dir%2Fk%2F", WITH_PREFIX),
    listing("delimiter=%2F&prefix=dir%2Fk%2F", status=403),  # the store refused the listing: its answer stands
    listing("prefix=dir%2Fk%2F"),  # no delimiter: not rclone's folder listing
    listing("delimiter=%2F&prefix=dir%2Fk"),  # not k/
    listing("delimiter=%2F&prefix=dir%2Fother%2F"),
    listing("delimiter=%2F&prefix=dir%2Fk%2F&marker=dir%2Fk%2Fa"),  # a later page
    listing("list-type=2&delimiter=%2F&prefix=dir%2Fk%2F&continuation-token=abc"),
    listing("list-type=2&delimiter=%2F&prefix=dir%2Fk%2F&start-after=dir%2Fk%2Fa"),
], ids=["folder", "subfolder", "refused", "no-delimiter", "no-slash", "other-key", "marker", "continuation",
        "start-after"])
def test_other_listings_stand(flow):
    before = flow.response
    failed_heads(head(424)).on_listing(flow, "b")
    assert flow.response is before


@pytest.mark.parametrize("status", [200, 304, 404, 412])
def test_only_a_failed_head_is_remembered(status):
    assert not failed_heads(head(status)).failed


def test_a_failed_get_is_not_remembered():
    flow = tflow.tflow(req=tutils.treq(method=b"GET", path=b"/b/dir/k"), resp=tutils.tresp(status_code=424))
    assert not failed_heads(flow).failed


def test_another_bucket_or_store_is_not_the_failed_key():
    other_bucket = listing("delimiter=%2F&prefix=dir%2Fk%2F")
    remembered = failed_heads(head(424))
    remembered.on_listing(other_bucket, "c")
    assert other_bucket.response is not None and other_bucket.response.status_code == 200
    other_store = listing("delimiter=%2F&prefix=dir%2Fk%2F")
    remembered.endpoint = lambda request: "http://elsewhere:9000"
    remembered.on_listing(other_store, "b")
    assert other_store.response is not None and other_store.response.status_code == 200


def test_is_empty_listing():
    assert is_empty_listing(EMPTY)
    assert not is_empty_listing(WITH_OBJECT) and not is_empty_listing(WITH_PREFIX)
    assert not is_empty_listing(b"<Error><Code>NoSuchBucket</Code></Error>")
