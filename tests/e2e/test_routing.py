"""Redirect rules and the rest of the OSS RoutingRule vocabulary, end to end:
real mitmdump, real SeaweedFS (a second one with SigV4 on, as a private S3 origin),
and two scripted origins (the second one a healthy secondary)."""

from __future__ import annotations

import pytest
import requests

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.origin_server import (
    LAST_MODIFIED,
    STORABLE,
    ScriptedOrigin,
    body_for,
    echo_of,
)
from tests.support import (
    Mitmdump,
    http_get,
    mirror_rule,
    stored,
    wait_for,
    wait_stored,
    write_rules,
)


def redirect_rule(number: int, prefix: str = "", status: int | None = None, headers: list | None = None, **redirect) -> dict:
    condition: dict = {"KeyPrefixEquals": prefix}
    if status is not None:
        condition["HttpErrorCodeReturnedEquals"] = status
    if headers:
        condition["IncludeHeader"] = headers
    return {"RuleNumber": number, "Condition": condition, "Redirect": {"RedirectType": "External", **redirect}}


@pytest.fixture(scope="module")
def secondary():
    origin = ScriptedOrigin(forced="ok").start()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def private_origin(tmp_path_factory):
    """A second store with authentication on: a private S3 bucket as the origin (S3 -> S3)."""
    origin = EmbeddedStore(tmp_path_factory.mktemp("private"), free_ports(1, with_grpc=True)[0], "originkey", "originsecret")
    origin.start()
    origin.create_buckets(["origin-bucket"])
    origin.client().put_object(Bucket="origin-bucket", Key="s3auth/report.csv", Body=b"a,b\n1,2\n", ContentType="text/csv")
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def routing_proxy(tmp_path_factory, store, origin, secondary, private_origin):
    base, alt = f"{origin.base}/dir1/", f"{secondary.base}/dir1/"
    private = f"{private_origin.endpoint}/origin-bucket/"
    auth = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "originkey", "AccessKeySecret": "originsecret"}
    rules = write_rules(tmp_path_factory.mktemp("routing") / "rules.json", {
        "redirect-bucket": [
            redirect_rule(1, "hidden/", HttpRedirectCode=301, Protocol="https", HostName="docs.example.com",
                          ReplaceKeyWith="moved/${key}", PassQueryString=True),
            mirror_rule(2, base, "mixed/"),
            redirect_rule(3, "mixed/", HostName="fallback.example.com"),
            redirect_rule(4, "swap/", 404, HttpRedirectCode=307, EnableReplacePrefix=True, ReplaceKeyPrefixWith="new/"),
            {**redirect_rule(5, "cdn/", 404, HostName="cdn.example.com"), "Redirect": {
                "RedirectType": "AliCDN", "HostName": "cdn.example.com"}},
            redirect_rule(6, "dev/", 404, [{"Key": "x-device", "Equals": "mobile"}], HostName="m.example.com"),
            redirect_rule(7, "dev/", 404, [{"Key": "user-agent", "StartsWith": "curl/"}], HostName="curl.example.com"),
            redirect_rule(8, "dev/", 404, [{"Key": "x-client", "EndsWith": "-app"}], HostName="app.example.com"),
            redirect_rule(9, "errors/", 404, ReplaceKeyWith="error.html"),
        ],
        "options-bucket": [
            mirror_rule(1, base, "slave/", MirrorURLSlave=alt),
            mirror_rule(2, base, "slaveall/", MirrorURLSlave=alt, MirrorSwitchAllErrors=True),
            mirror_rule(3, base, "probe/", MirrorURLSlave=alt, MirrorURLProbe=f"{origin.base}/health/error500/"),
            mirror_rule(4, base, "head/", MirrorAllowHeadObject=True),
            mirror_rule(5, base, "slashes/", MirrorPassOriginalSlashes=True),
            mirror_rule(6, base, "md5/", MirrorCheckMd5=True),
            mirror_rule(7, base, "transparent/", TransparentMirrorResponseCodes=[403]),
            mirror_rule(8, base, "proxypass/", MirrorProxyPass=True),
            mirror_rule(9, base, "meta/", MirrorUserLastModified=True, MirrorSaveOssMeta=True),
            mirror_rule(10, base, "rewrite/", ReplaceKeyWith="ok/renamed-${key}"),
            mirror_rule(11, base, "legacy/", EnableReplacePrefix=True, ReplaceKeyPrefixWith="ok/"),
            mirror_rule(12, private, "s3auth/", MirrorAuth=auth),
            mirror_rule(13, private, "s3noauth/", ReplaceKeyPrefixWith="s3auth/", EnableReplacePrefix=True),
            mirror_rule(14, f"{origin.base}/dir1/echo/", "mirrorhost/", MirrorHost="old.example.com",
                        MirrorHeaders={"PassAll": True}),
            mirror_rule(15, base, "query/", PassQueryString=True),
            mirror_rule(16, base, "query-off/", PassQueryString=True, MirrorPassQueryString=False),
        ],
    })
    store.create_buckets(["redirect-bucket", "options-bucket"])
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path_factory.mktemp("routing-proxy"),
                     {"backorigin_max_rules": "20", "backorigin_origin_timeout": "1.5"}).start()
    yield proxy
    proxy.stop()


# External / AliCDN redirects -----------------------------------------------------------------


def test_redirect_without_status_hides_existing_objects_too(routing_proxy, s3, origin, unique):
    key = f"hidden/{unique}.html"
    s3.put_object(Bucket="redirect-bucket", Key=key, Body=b"exists")
    status, headers, body = http_get(f"{routing_proxy.url}/redirect-bucket/{key}?lang=en&X-Amz-Signature=x")
    assert status == 301 and body == b""
    assert headers["location"] == f"https://docs.example.com/moved/{key}?lang=en"
    # HEAD is redirected too; other methods are not
    assert requests.head(f"{routing_proxy.url}/redirect-bucket/{key}").status_code == 301
    assert requests.put(f"{routing_proxy.url}/redirect-bucket/{key}", data=b"new").status_code == 200


def test_rule_order_an_earlier_mirror_rule_waits_for_the_store(routing_proxy, s3, origin, unique):
    # rule 2 (mirror, 404) precedes rule 3 (redirect, no status): a missing key mirrors...
    missing = f"mixed/{unique}"
    assert http_get(f"{routing_proxy.url}/redirect-bucket/{missing}")[0] == 200
    # ...an existing one falls through to rule 3
    present = f"mixed/{unique}-present"
    s3.put_object(Bucket="redirect-bucket", Key=present, Body=b"x")
    status, headers, _ = http_get(f"{routing_proxy.url}/redirect-bucket/{present}")
    assert status == 302 and headers["location"] == f"http://fallback.example.com/{present}"


def test_redirect_on_404_replaces_the_prefix_on_the_clients_host(routing_proxy, s3, unique):
    status, headers, _ = http_get(f"{routing_proxy.url}/redirect-bucket/swap/{unique}/a%20b.txt")
    assert status == 307
    assert headers["location"] == f"{routing_proxy.url}/redirect-bucket/new/{unique}/a%20b.txt"
    s3.put_object(Bucket="redirect-bucket", Key=f"swap/{unique}/there", Body=b"here")
    status, _, body = http_get(f"{routing_proxy.url}/redirect-bucket/swap/{unique}/there")
    assert (status, body) == (200, b"here")  # a 404 rule leaves existing objects alone


def test_error_page_redirect(routing_proxy, unique):
    status, headers, _ = http_get(f"{routing_proxy.url}/redirect-bucket/errors/{unique}")
    assert status == 302 and headers["location"] == f"{routing_proxy.url}/redirect-bucket/error.html"


def test_alicdn_redirect_carries_the_cdn_header(routing_proxy, unique):
    status, headers, _ = http_get(f"{routing_proxy.url}/redirect-bucket/cdn/{unique}")
    assert status == 302
    assert headers["location"] == f"http://cdn.example.com/cdn/{unique}"
    assert headers["x-backorigin-redirect-type"] == "AliCDN"


@pytest.mark.parametrize(
    "client_headers, host",
    [
        ({"x-device": "mobile"}, "m.example.com"),
        ({"x-device": "desktop", "user-agent": "curl/8.5"}, "curl.example.com"),
        ({"x-device": "mobilex", "user-agent": "python", "x-client": "ios-app"}, "app.example.com"),
    ],
)
def test_include_header_equals_startswith_endswith(routing_proxy, client_headers, host, unique):
    status, headers, _ = http_get(f"{routing_proxy.url}/redirect-bucket/dev/{unique}", client_headers)
    assert status == 302 and headers["location"] == f"http://{host}/dev/{unique}"


def test_include_header_not_matched_leaves_the_404(routing_proxy, unique):
    status, _, body = http_get(f"{routing_proxy.url}/redirect-bucket/dev/{unique}", {"user-agent": "python"})
    assert status == 404 and b"NoSuchKey" in body


# Secondary origin, probe ---------------------------------------------------------------------


def test_secondary_origin_on_5xx_and_network_faults(routing_proxy, origin, secondary, unique):
    for scenario in ("error500", "reset"):
        key = f"slave/{scenario}/{unique}"
        status, headers, body = http_get(f"{routing_proxy.url}/options-bucket/{key}")
        assert status == 200 and body == body_for(f"/dir1/{key}")
        assert headers["x-oss-tag"] == f"MIRROR {secondary.base}/dir1/{key}"
    assert len(secondary.requests_for(unique)) == 2


def test_secondary_origin_not_asked_on_4xx_unless_switch_all_errors(routing_proxy, secondary, unique):
    assert http_get(f"{routing_proxy.url}/options-bucket/slave/forbidden/{unique}")[0] == 424
    assert http_get(f"{routing_proxy.url}/options-bucket/slave/missing/{unique}")[0] == 404
    assert secondary.requests_for(unique) == []
    assert http_get(f"{routing_proxy.url}/options-bucket/slaveall/forbidden/{unique}")[0] == 200
    assert http_get(f"{routing_proxy.url}/options-bucket/slaveall/missing/{unique}")[0] == 404
    assert [r.path for r in secondary.requests_for(unique)] == [f"/dir1/slaveall/forbidden/{unique}"]


def test_failed_probe_sends_fetches_to_the_secondary(routing_proxy, origin, secondary, unique):
    status, headers, _ = http_get(f"{routing_proxy.url}/options-bucket/probe/{unique}")
    assert status == 200 and headers["x-oss-tag"].startswith(f"MIRROR {secondary.base}/")
    assert origin.requests_for(unique) == [] and origin.requests_for("/health/")


# HEAD, slashes, MD5, transparent codes, proxy-pass -------------------------------------------


def test_head_on_a_miss_answers_as_the_object_will_and_stores_it(routing_proxy, origin, s3, unique):
    """With MirrorAllowHeadObject (head/) or without (slashes/): backorigin_head_on_miss=object."""
    for key in (f"head/{unique}", f"slashes/{unique}"):
        response = requests.head(f"{routing_proxy.url}/options-bucket/{key}")
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(body_for(f"/dir1/{key}")))
        assert response.headers["content-type"] == STORABLE["Content-Type"]
        assert response.headers["etag"] == s3.head_object(Bucket="options-bucket", Key=key)["ETag"]
    assert [r.path for r in origin.requests_for(unique)] == [f"/dir1/head/{unique}", f"/dir1/slashes/{unique}"]


def test_a_key_with_double_slashes_is_left_to_the_store(routing_proxy, origin, unique):
    """SeaweedFS folds // into / (it reads slashes/U/x) where AWS keeps them: which key the store
    read cannot be known, so the proxy forwards it untouched and asks no origin (issue 25). The
    origin key MirrorPassOriginalSlashes builds is tested alone (test_rules_targets)."""
    status, _, body = http_get(f"{routing_proxy.url}/options-bucket/slashes//{unique}//x")
    assert status == 404 and b"NoSuchKey" in body
    assert origin.requests_for(unique) == []


def test_md5_mismatch_answers_the_client_but_stores_nothing(routing_proxy, s3, unique):
    good, bad = f"md5/good/{unique}", f"md5/bad/{unique}"
    status, _, body = http_get(f"{routing_proxy.url}/options-bucket/{bad}")
    assert (status, body) == (200, body_for(f"/dir1/{bad}"))
    assert http_get(f"{routing_proxy.url}/options-bucket/{good}")[0] == 200
    wait_stored(s3, "options-bucket", good)
    wait_for(lambda: f"not stored: s3://options-bucket/{bad}: Content-MD5" in routing_proxy.log())
    assert stored(s3, "options-bucket", bad) is None


def test_transparent_response_codes_pass_the_origin_answer(routing_proxy, unique):
    status, _, body = http_get(f"{routing_proxy.url}/options-bucket/transparent/forbidden/{unique}")
    assert status == 403 and body == b"no"
    assert http_get(f"{routing_proxy.url}/options-bucket/transparent/error500/{unique}")[0] == 424


def test_proxy_pass_serves_without_storing(routing_proxy, origin, s3, unique):
    key = f"proxypass/{unique}"
    for _ in range(2):
        assert http_get(f"{routing_proxy.url}/options-bucket/{key}")[0] == 200
    assert len(origin.requests_for(unique)) == 2  # never stored, so asked every time
    assert stored(s3, "options-bucket", key) is None


# Metadata, key rewriting, SigV4 origins, MirrorHost, query ------------------------------------


def test_last_modified_and_origin_metadata_are_kept(routing_proxy, s3, unique):
    key = f"meta/{unique}"
    _, headers, _ = http_get(f"{routing_proxy.url}/options-bucket/{key}")
    assert headers["last-modified"] == LAST_MODIFIED
    assert headers["x-amz-meta-owner"] == "ops" and headers["x-amz-meta-team"] == "data"
    head = wait_stored(s3, "options-bucket", key)
    assert head["Metadata"]["owner"] == "ops" and head["Metadata"]["team"] == "data"
    _, later, _ = http_get(f"{routing_proxy.url}/options-bucket/{key}")  # served by the store
    assert later["last-modified"] == LAST_MODIFIED and later["x-amz-meta-owner"] == "ops"


def test_key_rewriting_builds_the_origin_path_but_stores_the_requested_key(routing_proxy, origin, s3, unique):
    http_get(f"{routing_proxy.url}/options-bucket/rewrite/{unique}")
    http_get(f"{routing_proxy.url}/options-bucket/legacy/{unique}-l")
    assert sorted(r.path for r in origin.requests_for(unique)) == sorted([
        f"/dir1/ok/renamed-rewrite/{unique}", f"/dir1/ok/{unique}-l"])
    assert wait_stored(s3, "options-bucket", f"rewrite/{unique}")
    assert wait_stored(s3, "options-bucket", f"legacy/{unique}-l")


def test_private_s3_bucket_as_origin_with_sigv4(routing_proxy, s3):
    status, headers, body = http_get(f"{routing_proxy.url}/options-bucket/s3auth/report.csv")
    assert status == 200 and body == b"a,b\n1,2\n" and headers["content-type"] == "text/csv"
    assert wait_stored(s3, "options-bucket", "s3auth/report.csv")
    # the same object without MirrorAuth: the private store refuses, the client gets 424
    status, _, body = http_get(f"{routing_proxy.url}/options-bucket/s3noauth/report.csv")
    assert status == 424 and b"the origin answered 403" in body


def test_mirror_host_sets_the_origins_host_header(routing_proxy, unique):
    _, _, body = http_get(f"{routing_proxy.url}/options-bucket/mirrorhost/{unique}")
    assert echo_of(body)["headers"]["host"] == "old.example.com"


def test_pass_query_string_and_its_mirror_override(routing_proxy, origin, unique):
    http_get(f"{routing_proxy.url}/options-bucket/query/{unique}?v=1")
    http_get(f"{routing_proxy.url}/options-bucket/query-off/{unique}?v=1")
    assert sorted(r.path for r in origin.requests_for(unique)) == [
        f"/dir1/query-off/{unique}", f"/dir1/query/{unique}?v=1"]
