"""Answers the proxy makes itself, and S3's XML errors."""

from __future__ import annotations

from mitmproxy.test import tutils

from backorigin.decision import Outcome
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectRef


def test_reply_to_response_keeps_the_body_verbatim_and_a_given_length():
    reply = replies.Reply(200, [("content-encoding", "gzip")], b"\x1f\x8b raw")
    resp = replies.to_response(tutils.treq(path=b"/b/k"), reply)
    assert resp.raw_content == b"\x1f\x8b raw" and resp.headers["content-length"] == "6" and resp.reason == "OK"
    head = replies.to_response(tutils.treq(path=b"/b/k", method=b"HEAD"), replies.Reply(200, [("content-length", "1234")]))
    assert head.headers.get_all("content-length") == ["1234"] and head.raw_content == b""


def test_mirror_failed_is_s3_xml():
    reply = replies.mirror_failed(ObjectRef("b", "k<&>"), "timeout")
    assert reply.status == 424 and reply.outcome is Outcome.MIRROR_FAILED
    assert b"<Code>MirrorFailed</Code>" in reply.body and b"<Key>k&lt;&amp;&gt;</Key>" in reply.body


def test_a_bucket_level_error_names_no_key_and_its_code_reads_back():
    body = replies.error_body("InvalidArgument", "m", ObjectRef("b", ""), "id")
    assert b"<Key>" not in body and b"<BucketName>b</BucketName>" in body
    assert replies.error_code_of(body) == "InvalidArgument" and replies.error_code_of(b"<html>") is None


def test_slow_down_asks_the_client_to_retry():
    reply = replies.slow_down(ObjectRef("b", "k"))
    assert reply.status == 503 and ("retry-after", "1") in reply.headers and replies.error_code_of(reply.body) == "SlowDown"
