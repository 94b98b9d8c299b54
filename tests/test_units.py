"""Pure pieces on their own: S3 addressing, origin URL/header policy, replies, conditionals and ranges, ETags."""

from __future__ import annotations

import base64
import hashlib

import pytest
from mitmproxy.test import tutils

from backorigin.miss import objectmeta
from backorigin.miss.conditional import (
    Answer,
    RangeNotSatisfiable,
    Validators,
    byte_range,
    needs_etag,
    plan,
)
from backorigin.miss.integrity import StoreETag
from backorigin.miss.mirror import Mirror
from backorigin.miss.origin import (
    OriginClient,
    OriginRequest,
    OriginResult,
    Timeouts,
    UnsafeKey,
    origin_headers,
    origin_key,
    origin_url,
    passable_query,
    should_switch,
)
from backorigin.rules import plan as storeanswer
from backorigin.rules.model import parse_rules
from backorigin.rules.targets import location
from backorigin.s3 import addressing as s3
from backorigin.s3 import replies
from backorigin.writeback.upload import ObjectUpload
from backorigin.writeback.worker import WriteBackWorker


def request(path: str, **kwargs):
    return tutils.treq(path=path.encode(), **kwargs)


# s3 addressing ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "path, expected",
    [
        ("/photos/a/b.jpg", s3.ObjectRef("photos", "a/b.jpg")),
        ("/photos/a%20b%2Bc%E4%B8%AD", s3.ObjectRef("photos", "a b+c\u4e2d")),
        ("/photos//lead", s3.ObjectRef("photos", "/lead")),
        ("/photos/k?acl", s3.ObjectRef("photos", "k")),
        ("/photos/", None),
        ("/photos", None),
        ("/", None),
    ],
)
def test_object_ref_is_path_style_and_percent_decoded(path, expected):
    assert s3.object_ref(request(path)) == expected


def test_subresources_are_not_plain_object_calls():
    assert s3.is_plain_object_call(request("/b/k?response-content-type=text/plain"))
    for sub in ("acl", "tagging", "uploadId=1", "versionId=2", "partNumber=1", "torrent"):
        assert not s3.is_plain_object_call(request(f"/b/k?{sub}"))


def test_no_such_key_is_told_apart_from_no_such_bucket():
    body = s3.error_body("NoSuchKey", "m", s3.ObjectRef("b", "k"), "id")
    assert storeanswer.rules_status("GET", 404, body) == 404
    other = s3.error_body("NoSuchBucket", "m", s3.ObjectRef("b", "k"), "id")
    assert storeanswer.rules_status("GET", 404, other) is None
    assert storeanswer.rules_status("HEAD", 404, b"") == 404  # a HEAD has no body to tell
    assert storeanswer.rules_status("GET", 404, b"", unrecorded_replay=True) == 404
    assert storeanswer.rules_status("GET", 403, body) == 403


@pytest.mark.parametrize("status, present", [(200, True), (206, True), (304, True), (412, True), (416, True),
                                             (404, False), (403, False), (500, False), (301, False)])
def test_what_shows_that_the_store_has_the_object(status, present):
    assert storeanswer.shows_object(status) is present


def test_only_access_denied_may_hide_a_miss_and_only_when_asked():
    denied = s3.error_body("AccessDenied", "m", s3.ObjectRef("b", "k"), "id")
    forged = s3.error_body("SignatureDoesNotMatch", "m", s3.ObjectRef("b", "k"), "id")
    assert storeanswer.may_hide_a_miss(403, denied, denied_is_miss=True)
    assert not storeanswer.may_hide_a_miss(403, denied, denied_is_miss=False)
    assert not storeanswer.may_hide_a_miss(403, forged, denied_is_miss=True)
    assert not storeanswer.may_hide_a_miss(404, denied, denied_is_miss=True)


def test_a_replayed_flow_carries_the_store_status_it_was_recorded_with():
    assert storeanswer.recorded_status(None) is None
    assert storeanswer.recorded_status({"store_status": 500, "action": "redirect"}) == 500
    assert storeanswer.recorded_status({"action": "mirror"}) == 404  # recorded before store_status was kept
    assert storeanswer.recorded_status({"action": "redirect"}) is None


# origin URL and headers ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "key, url",
    [
        ("a/b.jpg", "http://o/dir1/a/b.jpg"),
        ("sp ace+plus%pct", "http://o/dir1/sp%20ace%2Bplus%25pct"),
        ("\u4e2d/\u00e9", "http://o/dir1/%E4%B8%AD/%C3%A9"),
        ("a@b\\c?d#e", "http://o/dir1/a%40b%5Cc%3Fd%23e"),
        ("ctl\x00\x1f", "http://o/dir1/ctl%00%1F"),
        ("//x", "http://o/dir1///x"),
        ("a..b/..c", "http://o/dir1/a..b/..c"),
    ],
)
def test_origin_url_encodes_the_key_as_a_path(key, url):
    assert origin_url("http://o/dir1/", key) == url


@pytest.mark.parametrize("key", ["..", "../x", "a/../../x", "a/./b", "a/.", "./a"])
def test_dot_segments_are_refused(key):
    with pytest.raises(UnsafeKey):
        origin_url("http://o/dir1/", key)


def test_query_is_appended_without_signatures():
    req = request("/b/k?a=1&X-Amz-Signature=s&X-Amz-Credential=c&Signature=x&OSSAccessKeyId=i&Expires=9&b=%20&flag")
    assert passable_query(req) == "a=1&b=%20&flag"
    assert origin_url("http://o/", "k", "a=1") == "http://o/k?a=1"


def rule_with_headers(policy: dict):
    doc = {"Buckets": [{"Name": "b", "RoutingRules": [
        {"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorHeaders": policy}}]}]}
    return parse_rules(__import__("json").dumps(doc), "t").rules_for("b")[0]


CLIENT = [("Host", "bucket.example"), ("A-Header", "111"), ("b-header", "222"), ("c-header", "333"),
          ("Authorization", "AWS4 secret"), ("Range", "bytes=0-1"), ("x-amz-date", "d"), ("X-Oss-Meta-x", "1")]


def test_headers_default_to_none_of_the_clients():
    assert origin_headers(rule_with_headers({}), CLIENT) == ()


def test_headers_pass_remove_set_as_in_the_manual():
    rule = rule_with_headers({"Pass": ["a-header"], "Remove": ["b-header"], "Set": [{"Key": "c-header", "Value": "000"}]})
    assert origin_headers(rule, CLIENT) == (("a-header", "111"), ("c-header", "000"))


def test_pass_all_passes_host_but_never_protected_headers():
    rule = rule_with_headers({"PassAll": True, "Remove": ["b-header"]})
    assert dict(origin_headers(rule, CLIENT)) == {"host": "bucket.example", "a-header": "111", "c-header": "333"}
    assert "host" not in dict(origin_headers(rule_with_headers({"PassAll": True, "Remove": ["Host"]}), CLIENT))


# replies ------------------------------------------------------------------------------------

def test_reply_to_response_keeps_the_body_verbatim_and_a_given_length():
    reply = replies.Reply(200, [("content-encoding", "gzip")], b"\x1f\x8b raw")
    resp = replies.to_response(request("/b/k"), reply)
    assert resp.raw_content == b"\x1f\x8b raw" and resp.headers["content-length"] == "6" and resp.reason == "OK"
    head = replies.to_response(request("/b/k", method=b"HEAD"), replies.Reply(200, [("content-length", "1234")]))
    assert head.headers.get_all("content-length") == ["1234"] and head.raw_content == b""


def test_oss_tag_is_decoded_but_stays_printable_ascii():
    assert replies.oss_tag("http://o/a%20b%2Bc") == "MIRROR http://o/a b+c"
    assert replies.oss_tag("http://o/%E4%B8%AD%0A") == "MIRROR http://o/%E4%B8%AD%0A"


def test_mirror_failed_is_s3_xml():
    reply = replies.mirror_failed(s3.ObjectRef("b", "k<&>"), "timeout")
    assert reply.status == 424 and reply.outcome == "mirror-failed"
    assert b"<Code>MirrorFailed</Code>" in reply.body and b"<Key>k&lt;&amp;&gt;</Key>" in reply.body


# conditionals and ranges (S3's order), ETags ----------------------------------------------------

@pytest.mark.parametrize(
    "header, size, expected",
    [("", 10, None), ("bytes=0-4", 10, (0, 4)), ("bytes=5-", 10, (5, 9)), ("bytes=-3", 10, (7, 9)),
     ("bytes=-30", 10, (0, 9)), ("bytes=8-100", 10, (8, 9)), ("bytes=0-1,3-4", 10, None), ("items=0-1", 10, None),
     ("bytes=5-2", 10, None)],
)
def test_byte_ranges(header, size, expected):
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 10)


ETAG = '"0123456789abcdef0123456789abcdef"'
MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"
EARLIER, LATER = "Tue, 01 Dec 2026 09:00:00 GMT", "Tue, 01 Dec 2026 11:00:00 GMT"


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, Answer(200, 0, 9, 10)),
        ({"range": "bytes=2-4"}, Answer(206, 2, 4, 10)),
        ({"range": "bytes=20-"}, Answer(416, size=10)),
        ({"if-match": ETAG}, Answer(200, 0, 9, 10)),
        ({"if-match": '"other", ' + ETAG}, Answer(200, 0, 9, 10)),
        ({"if-match": "*"}, Answer(200, 0, 9, 10)),
        ({"if-match": '"other"'}, Answer(412, size=10)),
        ({"if-match": '"other"', "range": "bytes=0-1"}, Answer(412, size=10)),
        ({"if-unmodified-since": EARLIER}, Answer(412, size=10)),
        ({"if-unmodified-since": LATER}, Answer(200, 0, 9, 10)),
        ({"if-match": ETAG, "if-unmodified-since": EARLIER}, Answer(200, 0, 9, 10)),  # If-Match wins (S3)
        ({"if-none-match": ETAG}, Answer(304, size=10)),
        ({"if-none-match": '"other"'}, Answer(200, 0, 9, 10)),
        ({"if-modified-since": LATER}, Answer(304, size=10)),
        ({"if-modified-since": MODIFIED}, Answer(304, size=10)),
        ({"if-modified-since": EARLIER}, Answer(200, 0, 9, 10)),
        ({"if-none-match": '"other"', "if-modified-since": LATER}, Answer(200, 0, 9, 10)),  # If-None-Match wins
        ({"if-modified-since": "not a date"}, Answer(200, 0, 9, 10)),
        ({"range": "bytes=0-1", "if-range": ETAG}, Answer(206, 0, 1, 10)),
        ({"range": "bytes=0-1", "if-range": '"other"'}, Answer(200, 0, 9, 10)),
        ({"range": "bytes=0-1", "if-range": LATER}, Answer(206, 0, 1, 10)),
        ({"range": "bytes=0-1", "if-range": EARLIER}, Answer(200, 0, 9, 10)),
    ],
)
def test_conditionals_and_ranges_as_s3_answers_them(headers, expected):
    assert plan(headers.get, 10, Validators(ETAG, MODIFIED)) == expected


def test_unknown_etag_never_matches_and_answers_say_their_range():
    assert plan({"if-match": ETAG}.get, 10, Validators(None, MODIFIED)).status == 412
    assert needs_etag({"if-range": ETAG}.get) and not needs_etag({"range": "bytes=0-1"}.get)
    assert Answer(206, 2, 4, 10).content_range == "bytes 2-4/10" and Answer(416, size=10).content_range == "bytes */10"
    assert Answer(200, 0, -1, 0).length == 0


def test_store_etag_is_the_md5_or_the_multipart_rule():
    single = StoreETag(part_size=8)
    single.update(b"abc")
    assert single.value() == f'"{hashlib.md5(b"abc").hexdigest()}"'
    assert single.md5_base64 == base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    parts = StoreETag(part_size=4)
    for chunk in (b"ab", b"cdefgh", b"ij"):  # parts abcd, efgh, ij whatever the chunking
        parts.update(chunk)
    digests = b"".join(hashlib.md5(p).digest() for p in (b"abcd", b"efgh", b"ij"))
    assert parts.value() == f'"{hashlib.md5(digests).hexdigest()}-3"'
    exact = StoreETag(part_size=4)
    exact.update(b"abcd")  # a body of exactly one part goes up as one multipart part
    assert exact.value() == f'"{hashlib.md5(hashlib.md5(b"abcd").digest()).hexdigest()}-1"'
    for whole in (single, parts, exact):  # the whole body's MD5 too, one hash or two
        assert whole.md5_hex == hashlib.md5({single: b"abc", parts: b"abcdefghij", exact: b"abcd"}[whole]).hexdigest()


def test_no_fill_starts_for_an_object_that_landed_meanwhile(tmp_path):
    """A miss that waited (a tombstone check) while the object's write-back landed must not
    fetch the origin again: the store answers it."""
    mirror = Mirror(OriginClient(Timeouts(), max_inline=1024), WriteBackWorker(tmp_path / "spool"))
    mirror.known.add(("http://store", "b", "k"))
    request = OriginRequest("http://o/k", ())
    assert mirror.start("http://store", s3.ObjectRef("b", "k"), rule_with_headers({}), request) is None
    assert len(mirror.fills) == 0


# write-back arguments -----------------------------------------------------------------------

def test_put_arguments_are_create_only_with_headers_and_metadata():
    upload = ObjectUpload("http://s", "b", "k", {
        "content-type": "text/plain", "cache-control": "no-cache", "expires": "Wed, 21 Oct 2037 07:28:00 GMT",
        "access-control-allow-origin": "*"}, {"backorigin-origin-url": "http://o/k", "access-control-allow-origin": "*"},
        4, "jXd/OF09/siBXSD3SWAm3A==")
    args = upload.put_arguments(b"data")
    assert args["IfNoneMatch"] == "*" and args["StorageClass"] == "STANDARD"
    assert args["ContentType"] == "text/plain" and args["CacheControl"] == "no-cache"
    assert args["Expires"].year == 2037
    assert args["Metadata"] == {"backorigin-origin-url": "http://o/k", "access-control-allow-origin": "*"}
    assert args["ContentMD5"] == "jXd/OF09/siBXSD3SWAm3A=="


def test_unparsable_expires_is_left_out():
    assert "Expires" not in ObjectUpload("http://s", "b", "k", {"expires": "0"}, {}, 0, "").object_arguments()


def test_user_metadata_by_rule_flags_and_ascii_only():
    headers = (("Access-Control-Allow-Origin", "h\u00e9"), ("Last-Modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
               ("x-oss-meta-Owner", "ops"), ("X-Amz-Meta-team", "data"))
    result = OriginResult("http://o/k", 200, headers, b"")
    plain = rule_with_headers({}).Redirect
    announced = "Tue, 01 Dec 2026 10:00:00 GMT"  # the time of the miss, kept so hits show the same validator
    assert objectmeta.user_metadata(result, plain, announced) == {
        "backorigin-origin-url": "http://o/k", "backorigin-last-modified": announced}
    rich = plain.model_copy(update={"MirrorSaveOssMeta": True, "MirrorUserLastModified": True})
    assert objectmeta.user_metadata(result, rich, announced) == {
        "backorigin-origin-url": "http://o/k", "owner": "ops", "team": "data",
        "backorigin-last-modified": "Tue, 01 Jan 2030 00:00:00 GMT",
    }


# secondary origin switching, slashes, redirects' Location ------------------------------------

@pytest.mark.parametrize(
    "status, all_errors, switch",
    [(None, False, True), (500, False, True), (503, False, True), (403, False, False), (404, False, False),
     (200, False, False), (None, True, True), (403, True, True), (500, True, True), (404, True, False),
     (302, True, False), (206, True, False)],
)
def test_should_switch_to_the_secondary(status, all_errors, switch):
    assert should_switch(OriginResult("u", status), all_errors) is switch


def test_origin_key_collapses_slashes_unless_told_not_to():
    plain = rule_with_headers({})
    assert origin_key(plain, "//a//b///c") == "a/b/c"
    keep = plain.model_copy(update={"Redirect": plain.Redirect.model_copy(update={"MirrorPassOriginalSlashes": True})})
    assert origin_key(keep, "//a//b") == "//a//b"


def test_redirect_location():
    doc = {"Buckets": [{"Name": "b", "RoutingRules": [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "old/"}, "Redirect": {
            "RedirectType": "External", "EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "new dir/", "PassQueryString": True}},
        {"RuleNumber": 2, "Redirect": {"RedirectType": "External", "Protocol": "https", "HostName": "cdn.example.com:8443"}},
    ]}]}
    first, second = parse_rules(__import__("json").dumps(doc), "t").rules_for("b")
    req = request("/b/old/x%2By?a=1&Signature=s")
    ref = s3.ObjectRef("b", "old/x+y")
    assert location(first, ref, req, "http", "proxy:8080") == "http://proxy:8080/b/new%20dir/x%2By?a=1"
    assert location(second, ref, req, "http", "proxy:8080") == "https://cdn.example.com:8443/old/x%2By"
