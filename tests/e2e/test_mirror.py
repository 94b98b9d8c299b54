"""Mirror back-to-origin end to end: real mitmdump, real SeaweedFS, scripted origin; in the
order of the README's "What happens on a miss"."""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import http.client
from urllib.parse import quote

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config

from tests.origin_server import STORABLE, body_for, echo_of
from tests.support import http_get, stored, wait_for, wait_stored

# 1. Only GetObject on NoSuchKey is a candidate -------------------------------------------


def test_get_of_missing_key_is_mirrored(proxy, origin, s3, unique):
    key = f"ok/{unique}.txt"
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/{key}")
    assert status == 200
    assert body == body_for(f"/dir1/{key}")
    assert origin.requests_for(unique)[0].path == f"/dir1/{key}"


def test_head_of_a_miss_answers_as_the_object_will(proxy, origin, s3, unique):
    """Default backorigin_head_on_miss=object (OSS's 404 is in test_addon): S3 tools HEAD first."""
    key = f"ok/{unique}"
    response = requests.head(f"{proxy.url}/mirror-bucket/{key}")
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == str(len(body_for(f"/dir1/{key}")))
    head = wait_stored(s3, "mirror-bucket", key)
    assert response.headers["etag"] == head["ETag"]
    assert [r.path for r in origin.requests_for(unique)] == [f"/dir1/{key}"]  # one GET, no HEAD to the origin


@pytest.mark.parametrize("subresource", ["acl", "tagging", "uploadId=abc", "versionId=v1", "attributes"])
def test_subresource_gets_pass_through(proxy, origin, unique, subresource):
    status, _, _ = http_get(f"{proxy.url}/mirror-bucket/ok/{unique}?{subresource}")
    assert status != 200
    assert origin.requests_for(unique) == []


def test_bucket_without_rules_is_never_touched(proxy, origin, unique):
    status, _, body = http_get(f"{proxy.url}/plain-bucket/ok/{unique}")
    assert status == 404 and b"NoSuchKey" in body
    assert origin.requests_for(unique) == []


def test_no_such_bucket_is_not_mirrored(proxy, origin, unique):
    status, _, body = http_get(f"{proxy.url}/absent-bucket/ok/{unique}")
    assert status == 404 and b"NoSuchBucket" in body
    assert origin.requests_for(unique) == []


def test_put_delete_and_list_pass_through(proxy, origin, s3, unique):
    key = f"ok/{unique}-put"
    assert requests.put(f"{proxy.url}/mirror-bucket/{key}", data=b"client data").status_code == 200
    assert s3.get_object(Bucket="mirror-bucket", Key=key)["Body"].read() == b"client data"
    listing = requests.get(f"{proxy.url}/mirror-bucket?list-type=2&prefix=ok/{unique}")
    assert listing.status_code == 200 and key.encode() in listing.content
    assert requests.delete(f"{proxy.url}/mirror-bucket/{key}").status_code == 204
    assert stored(s3, "mirror-bucket", key) is None
    assert origin.requests_for(unique) == []


def test_rules_apply_in_rule_number_order(proxy, origin, unique):
    # rule 4 (order/) precedes the catch-all rule 5 although the file lists 5 first
    http_get(f"{proxy.url}/mirror-bucket/order/{unique}")
    assert [r.path for r in origin.requests_for(unique)] == [f"/dir2/order/{unique}"]


def test_conditions_prefix_and_suffix(proxy, origin, unique):
    assert http_get(f"{proxy.url}/suffix-bucket/images/{unique}.jpg")[0] == 200
    assert http_get(f"{proxy.url}/suffix-bucket/images/{unique}.png")[0] == 404
    assert http_get(f"{proxy.url}/suffix-bucket/docs/{unique}.jpg")[0] == 404
    assert [r.path for r in origin.requests_for(unique)] == [f"/dir1/images/{unique}.jpg"]


# 2. Origin URL = MirrorURL + key, percent-encoded, never normalised ----------------------


def test_key_is_percent_encoded_as_a_path(proxy, origin, unique):
    key = f"ok/{unique} a+b%c\u4e2d@x~y"  # (a backslash: SeaweedFS reads it as /, AWS keeps it; left to the store)
    status, _, _ = http_get(f"{proxy.url}/mirror-bucket/{quote(key)}")
    assert status == 200
    expected = f"/dir1/ok/{unique}%20a%2Bb%25c%E4%B8%AD%40x~y"
    assert [r.path for r in origin.requests_for(unique)] == [expected]


@pytest.mark.parametrize("key", ["ok/../../{u}", "ok/./{u}", "../{u}", "ok/%2E%2E/{u}"])
def test_dot_segments_never_leave_mirror_url(proxy, origin, key, unique):
    status, _, body = http_get(f"{proxy.url}/mirror-bucket/{key.format(u=unique)}")
    assert status in (400, 404)  # the store's own answer (SeaweedFS refuses some dot paths itself)
    assert origin.requests_for(unique) == []


def test_key_cannot_change_origin_host(proxy, origin, unique):
    # a key holding '@' stays inside the origin's path (one starting with '/' is read as another key
    # by SeaweedFS, which drops it, than by AWS: the proxy leaves it to the store)
    status, _, _ = http_get(f"{proxy.url}/mirror-bucket/evil.example@{unique}")
    assert status == 200
    assert [r.path for r in origin.requests_for(unique)] == [f"/dir1/evil.example%40{unique}"]
    assert http_get(f"{proxy.url}/mirror-bucket//evil.example@{unique}-lead")[0] == 404
    assert origin.requests_for(f"{unique}-lead") == []


# 3. Headers and query string sent to the origin ------------------------------------------


def test_mirror_headers_pass_remove_set(proxy, origin, unique):
    status, _, body = http_get(
        f"{proxy.url}/mirror-bucket/pass/{unique}?keep=1&X-Amz-Signature=abc&Signature=s&OSSAccessKeyId=k",
        {
            "a-header": "111", "b-header": "222", "c-header": "333", "d-header": "444",
            "Authorization": "AWS4-HMAC-SHA256 Credential=secret",
            "x-amz-date": "20260101T000000Z", "x-oss-meta-a": "1",
        },
    )
    seen = echo_of(body) if status == 200 else pytest.fail(f"{status} {body!r}")
    headers = seen["headers"]
    assert headers["a-header"] == "111" and headers["c-header"] == "000"
    assert "b-header" not in headers and "d-header" not in headers
    assert not {"authorization", "x-amz-date", "x-oss-meta-a"} & set(headers)
    assert headers["host"] == f"127.0.0.1:{origin.port}"
    assert seen["path"] == f"/dir1/echo/pass/{unique}?keep=1"


def test_pass_all_passes_client_host_but_never_credentials(proxy, store, unique):
    status, _, body = http_get(
        f"{proxy.url}/mirror-bucket/passall/{unique}?q=1",
        {"a-header": "1", "b-header": "2", "Authorization": "secret", "x-amz-content-sha256": "x"},
    )
    headers = echo_of(body)["headers"]
    assert headers["a-header"] == "1" and "b-header" not in headers
    assert not {"authorization", "x-amz-content-sha256"} & set(headers)
    # PassAll passes the client's Host as OSS does (in reverse mode: the store's address)
    assert headers["host"] == store.endpoint.removeprefix("http://")
    assert echo_of(body)["path"] == f"/dir1/echo/passall/{unique}"  # no query: MirrorPassQueryString false


def test_pass_all_with_host_removed_sends_origin_host(proxy, origin, unique):
    status, _, body = http_get(f"{proxy.url}/headers-bucket/{unique}", {"x-custom": "v"})
    headers = echo_of(body)["headers"]
    assert headers["host"] == f"127.0.0.1:{origin.port}" and headers["x-custom"] == "v"


def test_query_string_not_sent_by_default(proxy, origin, unique):
    http_get(f"{proxy.url}/mirror-bucket/ok/{unique}?a=1")
    assert [r.path for r in origin.requests_for(unique)] == [f"/dir1/ok/{unique}"]


# 4. Origin redirects ---------------------------------------------------------------------


def test_redirects_are_followed_and_stored_under_requested_key(proxy, origin, s3, unique):
    key = f"redirect/3/{unique}"
    status, _, body = http_get(f"{proxy.url}/mirror-bucket/{key}")
    assert status == 200 and body == body_for(f"/dir1/redirect/0/{unique}")
    assert len(origin.requests_for(unique)) == 4
    wait_stored(s3, "mirror-bucket", key)
    assert s3.get_object(Bucket="mirror-bucket", Key=key)["Body"].read() == body


def test_ten_hops_are_followed_eleven_fail(proxy, s3, unique):
    assert http_get(f"{proxy.url}/mirror-bucket/redirect/10/{unique}")[0] == 200
    status, _, body = http_get(f"{proxy.url}/mirror-bucket/redirect/11/{unique}")
    assert status == 424 and b"<Code>MirrorFailed</Code>" in body


def test_redirect_loop_is_a_mirror_failure(proxy, unique):
    status, _, body = http_get(f"{proxy.url}/mirror-bucket/loop/{unique}")
    assert status == 424 and b"MirrorFailed" in body


def test_no_follow_passes_the_3xx_to_the_client(proxy, origin, unique):
    status, headers, _ = http_get(f"{proxy.url}/mirror-bucket/nofollow/1/{unique}")
    assert status == 302
    assert headers["location"] == f"/dir1/nofollow/0/{unique}"
    assert len(origin.requests_for(unique)) == 1


# 5. The client gets the origin's bytes and storable headers ------------------------------


def test_storable_headers_only_plus_oss_tag(proxy, origin, unique):
    key = f"ok/{unique}.txt"
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/{key}")
    for name, value in STORABLE.items():
        assert headers[name.lower()] == value
    assert not {"x-origin-private", "set-cookie"} & set(headers)
    assert headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'  # the store's ETag to be, not the origin's
    assert headers["x-oss-tag"] == f"MIRROR http://127.0.0.1:{origin.port}/dir1/{key}"


def test_oss_tag_is_url_decoded(proxy, origin, unique):
    _, headers, _ = http_get(f"{proxy.url}/mirror-bucket/ok/{unique}%20x")
    assert headers["x-oss-tag"] == f"MIRROR http://127.0.0.1:{origin.port}/dir1/ok/{unique} x"


def test_gzip_body_passes_through_verbatim(proxy, s3, unique):
    key = f"gzip/{unique}"
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/{key}")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert body == gzip.compress(body_for(f"/dir1/{key}"), mtime=0)
    wait_stored(s3, "mirror-bucket", key)
    obj = s3.get_object(Bucket="mirror-bucket", Key=key)
    assert obj["ContentEncoding"] == "gzip" and obj["Body"].read() == body


def test_chunked_origin_is_answered_with_its_length(proxy, unique):
    """A body of unknown length is answered once it is whole, so its length and ETag are known."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request("GET", f"/mirror-bucket/chunked/{unique}")
    response = connection.getresponse()
    body = body_for(f"/dir1/chunked/{unique}")
    assert response.status == 200
    assert response.getheader("transfer-encoding") is None
    assert response.getheader("content-length") == str(len(body))
    assert response.read() == body
    connection.close()


def test_boto3_client_through_the_proxy(proxy, unique):
    client = boto3.client(
        "s3", endpoint_url=proxy.url, region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}),
    )
    key = f"ok/{unique}.bin"
    obj = client.get_object(Bucket="mirror-bucket", Key=key)
    assert obj["Body"].read() == body_for(f"/dir1/{key}")
    assert obj["ContentType"] == STORABLE["Content-Type"]


# 6. Range on a missing object ------------------------------------------------------------


def test_range_request_gets_206_and_whole_object_is_stored(proxy, origin, s3, unique):
    key = f"ok/{unique}"
    whole = body_for(f"/dir1/{key}")
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/{key}", {"Range": "bytes=5-9"})
    assert status == 206 and body == whole[5:10]
    assert headers["content-range"] == f"bytes 5-9/{len(whole)}"
    assert "range" not in origin.requests_for(unique)[0].headers
    wait_stored(s3, "mirror-bucket", key)
    assert s3.get_object(Bucket="mirror-bucket", Key=key)["Body"].read() == whole


def test_suffix_and_unsatisfiable_ranges(proxy, unique):
    whole = body_for(f"/dir1/ok/{unique}-a")
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/ok/{unique}-a", {"Range": "bytes=-4"})
    assert status == 206 and body == whole[-4:]
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/ok/{unique}-b", {"Range": "bytes=99999-"})
    assert status == 416 and b"InvalidRange" in body


# 7. Origin 404 and failures --------------------------------------------------------------


def test_origin_404_gives_the_store_404(proxy, unique):
    status, _, body = http_get(f"{proxy.url}/mirror-bucket/missing/{unique}")
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body


@pytest.mark.parametrize("scenario", ["error500", "forbidden", "reset", "short", "slow"])
def test_origin_failures_give_424_mirror_failed(proxy, scenario, unique):
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/{scenario}/{unique}")
    assert status == 424
    assert headers["content-type"] == "application/xml"
    assert b"<Code>MirrorFailed</Code>" in body and unique.encode() in body


# 8. Write-back -----------------------------------------------------------------------------


def test_write_back_stores_body_headers_and_metadata(proxy, origin, s3, unique):
    key = f"ok/{unique}.txt"
    _, _, body = http_get(f"{proxy.url}/mirror-bucket/{key}")
    head = wait_stored(s3, "mirror-bucket", key)
    assert s3.get_object(Bucket="mirror-bucket", Key=key)["Body"].read() == body
    assert head["ContentType"] == STORABLE["Content-Type"]
    assert head["CacheControl"] == STORABLE["Cache-Control"]
    assert head["ContentDisposition"] == STORABLE["Content-Disposition"]
    assert head["ContentLanguage"] == STORABLE["Content-Language"]
    assert head["ResponseMetadata"]["HTTPHeaders"]["expires"] == STORABLE["Expires"]
    assert head["Metadata"]["access-control-allow-origin"] == "*"
    assert head["Metadata"]["backorigin-origin-url"] == f"http://127.0.0.1:{origin.port}/dir1/{key}"
    assert head.get("StorageClass", "STANDARD") == "STANDARD"


def test_later_downloads_carry_x_oss_tag_from_the_store(proxy, origin, s3, unique):
    key = f"ok/{unique}.txt"
    http_get(f"{proxy.url}/mirror-bucket/{key}")
    wait_stored(s3, "mirror-bucket", key)
    status, headers, _ = http_get(f"{proxy.url}/mirror-bucket/{key}")
    assert status == 200 and "x-amz-request-id" in {h.lower() for h in headers}  # served by the store
    assert headers["x-oss-tag"] == f"MIRROR http://127.0.0.1:{origin.port}/dir1/{key}"
    assert headers["access-control-allow-origin"] == "*"
    assert len(origin.requests_for(unique)) == 1


def test_create_only_never_overwrites_an_object_written_meanwhile(proxy, origin, s3, unique):
    key = f"gate/{unique}"
    origin.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http_get, f"{proxy.url}/mirror-bucket/{key}")
        wait_for(lambda: origin.requests_for(unique))  # the proxy is now waiting on the origin
        s3.put_object(Bucket="mirror-bucket", Key=key, Body=b"written by a client meanwhile")
        origin.gate.set()
        status, _, body = pending.result(timeout=30)
    assert status == 200 and body == body_for(f"/dir1/{key}")
    wait_for(lambda: "already exists" in proxy.log() and key in proxy.log())
    assert s3.get_object(Bucket="mirror-bucket", Key=key)["Body"].read() == b"written by a client meanwhile"


# 9. Existing objects are served by the store ---------------------------------------------


def test_existing_object_is_never_fetched_from_origin(proxy, origin, s3, unique):
    key = f"ok/{unique}"
    s3.put_object(Bucket="mirror-bucket", Key=key, Body=b"already migrated")
    status, headers, body = http_get(f"{proxy.url}/mirror-bucket/{key}")
    assert status == 200 and body == b"already migrated"
    assert "x-oss-tag" not in headers
    assert origin.requests_for(unique) == []


# 10. Concurrent misses share one fetch and one write-back ---------------------------------


def test_concurrent_gets_share_one_origin_fetch(proxy, origin, s3, unique):
    key = f"gate/{unique}"
    origin.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        pending = [pool.submit(http_get, f"{proxy.url}/mirror-bucket/{key}") for _ in range(10)]
        wait_for(lambda: origin.requests_for(unique))
        # hold the origin until the other nine have joined the fetch under way
        wait_for(lambda: proxy.log().count(f"joins the origin fetch under way for {key}") == 9)
        origin.gate.set()
        results = [p.result(timeout=30) for p in pending]
    assert {(status, body) for status, _, body in results} == {(200, body_for(f"/dir1/{key}"))}
    assert len(origin.requests_for(unique)) == 1
    wait_stored(s3, "mirror-bucket", key)
    wait_for(lambda: f"write-back stored s3://mirror-bucket/{key} " in proxy.log())
    assert proxy.log().count(f"s3://mirror-bucket/{key} ") == 1
