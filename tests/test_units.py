"""Pure pieces on their own: S3 addressing, origin URL/header policy, replies, single flight."""

from __future__ import annotations

import asyncio
import gzip

import pytest
from mitmproxy.test import tutils

from addon import objectmeta, replies, s3
from addon.flight import SingleFlight
from addon.origin import OriginResult, UnsafeKey, origin_headers, origin_key, origin_url, passable_query, should_switch
from addon.redirect import location
from addon.rules import parse_rules
from addon.writeback import ObjectUpload


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
    assert s3.is_no_such_key(tutils.tresp(status_code=404, content=body))
    other = s3.error_body("NoSuchBucket", "m", s3.ObjectRef("b", "k"), "id")
    assert not s3.is_no_such_key(tutils.tresp(status_code=404, content=other))
    assert not s3.is_no_such_key(tutils.tresp(status_code=403, content=body))


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

def result(body: bytes, headers=(), chunked=False) -> OriginResult:
    return OriginResult("http://o/dir1/a%20b", 200, tuple(headers), body, chunked=chunked)


def test_mirrored_body_is_verbatim_even_when_gzip():
    body = gzip.compress(b"x" * 100)
    resp = replies.mirrored(request("/b/k"), s3.ObjectRef("b", "k"),
                            result(body, [("Content-Encoding", "gzip"), ("Content-Type", "text/plain"), ("Server", "x")]))
    assert resp.raw_content == body
    assert resp.headers["content-length"] == str(len(body))
    assert resp.headers["content-encoding"] == "gzip" and "server" not in resp.headers
    assert resp.headers["x-oss-tag"] == "MIRROR http://o/dir1/a b"
    assert resp.reason == "OK"


def test_chunked_only_for_http11_clients():
    assert replies.mirrored(request("/b/k"), s3.ObjectRef("b", "k"), result(b"abc", chunked=True)).headers["transfer-encoding"] == "chunked"
    h2 = request("/b/k", http_version=b"HTTP/2.0")
    assert "transfer-encoding" not in replies.mirrored(h2, s3.ObjectRef("b", "k"), result(b"abc", chunked=True)).headers


@pytest.mark.parametrize(
    "header, size, expected",
    [("", 10, None), ("bytes=0-4", 10, (0, 4)), ("bytes=5-", 10, (5, 9)), ("bytes=-3", 10, (7, 9)),
     ("bytes=-30", 10, (0, 9)), ("bytes=8-100", 10, (8, 9)), ("bytes=0-1,3-4", 10, None), ("items=0-1", 10, None),
     ("bytes=5-2", 10, None)],
)
def test_byte_ranges(header, size, expected):
    assert replies.byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(replies.RangeNotSatisfiable):
        replies.byte_range(header, 10)


def test_oss_tag_is_decoded_but_stays_printable_ascii():
    assert replies.oss_tag("http://o/a%20b%2Bc") == "MIRROR http://o/a b+c"
    assert replies.oss_tag("http://o/%E4%B8%AD%0A") == "MIRROR http://o/%E4%B8%AD%0A"


def test_mirror_failed_is_s3_xml():
    resp = replies.mirror_failed(request("/b/k"), s3.ObjectRef("b", "k<&>"), "timeout")
    assert resp.status_code == 424
    assert b"<Code>MirrorFailed</Code>" in resp.content and b"<Key>k&lt;&amp;&gt;</Key>" in resp.content


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
    assert objectmeta.user_metadata(result, plain) == {"backorigin-origin-url": "http://o/k"}
    rich = plain.model_copy(update={"MirrorSaveOssMeta": True, "MirrorUserLastModified": True})
    assert objectmeta.user_metadata(result, rich) == {
        "backorigin-origin-url": "http://o/k", "owner": "ops", "team": "data",
        "backorigin-last-modified": "Tue, 01 Jan 2030 00:00:00 GMT",
    }


# single flight ------------------------------------------------------------------------------

async def test_single_flight_shares_one_run_and_survives_a_cancelled_caller():
    runs = 0
    release = asyncio.Event()

    async def fetch():
        nonlocal runs
        runs += 1
        await release.wait()
        return runs

    flight: SingleFlight[int] = SingleFlight()
    callers = [asyncio.create_task(flight.do("k", fetch)) for _ in range(5)]
    await asyncio.sleep(0)
    assert "k" in flight
    callers[0].cancel()  # one client hangs up
    release.set()
    results = await asyncio.gather(*callers[1:])
    assert results == [1, 1, 1, 1] and runs == 1 and len(flight) == 0
    assert await flight.do("k", fetch) == 2  # a later miss runs again


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
