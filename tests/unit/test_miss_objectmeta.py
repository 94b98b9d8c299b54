"""What a mirrored object carries besides its bytes, into the store and back out."""

from __future__ import annotations

from mitmproxy.test import tutils

from backorigin.miss import objectmeta
from backorigin.miss.origin import OriginResult
from backorigin.s3.addressing import ObjectRef
from tests.support import rule_of

HEADERS = (("Access-Control-Allow-Origin", "h\u00e9"), ("Last-Modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
           ("x-oss-meta-Owner", "ops"), ("X-Amz-Meta-team", "data"), ("Content-Type", "text/plain"), ("Server", "x"))
ANNOUNCED = "Tue, 01 Dec 2026 10:00:00 GMT"  # the time of the miss, kept so hits show the same validator


def test_oss_tag_is_decoded_but_stays_printable_ascii():
    assert objectmeta.oss_tag("http://o/a%20b%2Bc") == "MIRROR http://o/a b+c"
    assert objectmeta.oss_tag("http://o/%E4%B8%AD%0A") == "MIRROR http://o/%E4%B8%AD%0A"


def test_user_metadata_by_rule_flags_and_ascii_only():
    result = OriginResult("http://o/k", 200, HEADERS, b"")
    plain = rule_of().Redirect
    assert objectmeta.user_metadata(result, plain, ANNOUNCED) == {
        "backorigin-origin-url": "http://o/k", "backorigin-last-modified": ANNOUNCED}
    rich = plain.model_copy(update={"MirrorSaveOssMeta": True, "MirrorUserLastModified": True})
    assert objectmeta.user_metadata(result, rich, ANNOUNCED) == {
        "backorigin-origin-url": "http://o/k", "owner": "ops", "team": "data",
        "backorigin-last-modified": "Tue, 01 Jan 2030 00:00:00 GMT",
    }


def test_the_object_described_is_what_a_download_then_shows():
    result = OriginResult("http://o/k", 200, HEADERS, size=3, md5="md5", etag='"e"')
    upload = objectmeta.describe("http://store", ObjectRef("b", "k"), rule_of(), result, ANNOUNCED)
    assert (upload.endpoint, upload.bucket, upload.key, upload.size, upload.md5, upload.etag) == ("http://store", "b", "k", 3, "md5", '"e"')
    assert upload.headers == {"content-type": "text/plain", "access-control-allow-origin": "h\u00e9"}
    shown = dict(objectmeta.stored_headers(upload))
    assert shown["x-oss-tag"] == "MIRROR http://o/k" and shown["last-modified"] == ANNOUNCED
    response = tutils.tresp(headers=((b"x-amz-meta-backorigin-origin-url", b"http://o/k"),
                                     (b"x-amz-meta-backorigin-last-modified", ANNOUNCED.encode())))
    objectmeta.restore_on_download(response)
    assert response.headers["x-oss-tag"] == "MIRROR http://o/k" and response.headers["last-modified"] == ANNOUNCED
