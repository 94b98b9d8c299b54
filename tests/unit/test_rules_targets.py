"""Where a rule sends a request: the origin URL, key, query and headers of a mirror; a redirect's Location."""

from __future__ import annotations

import json
import string
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mitmproxy.test import tutils

from backorigin.httpclient import absolute_url
from backorigin.rules import targets as redirect
from backorigin.rules.model import RoutingRule, RulesError
from backorigin.rules.parsing import parse_rules
from backorigin.rules.targets import (
    NotAnS3Origin,
    OriginBucket,
    UnsafeKey,
    build_request,
    location,
    origin_headers,
    origin_key,
    origin_url,
    passable_query,
)
from backorigin.s3.addressing import ObjectRef, is_store_parameter
from tests.support import rule_of

# Each property is stated in its test's docstring. Examples are drawn afresh on every run
# (database=None: no example database is kept); a failure prints the smallest example
# hypothesis found, which then belongs in a plain test next to the property.
PROPERTY = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def request(path: str):
    return tutils.treq(path=path.encode())


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
    return rule_of({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorHeaders": policy})


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
    first, second = parse_rules(json.dumps(doc), "t").rules_for("b")
    req = request("/b/old/x%2By?a=1&Signature=s")
    ref = ObjectRef("b", "old/x+y")
    assert location(first, ref, req, "http", "proxy:8080") == "http://proxy:8080/b/new%20dir/x%2By?a=1"
    assert location(second, ref, req, "http", "proxy:8080") == "https://cdn.example.com:8443/old/x%2By"


def test_a_mirror_asks_for_the_rewritten_key_with_its_secondary_and_keeps_the_key_it_asked_for():
    rule = rule_of({"RedirectType": "Mirror", "MirrorURL": "http://o/new/", "MirrorURLSlave": "http://s/",
                    "EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "x//", "TransparentMirrorResponseCodes": "403,500",
                    "MirrorFollowRedirect": False}, {"KeyPrefixEquals": "old/"})
    asked = build_request(rule, "old/a b", request("/b/old/a%20b?q=1"))
    assert asked.url == "http://o/new/x/a%20b" and asked.fallback_url == "http://s/x/a%20b" and asked.key == "x/a b"
    assert asked.transparent_codes == frozenset({403, 500}) and not asked.follow_redirects and asked.auth is None


def test_an_s3_origin_is_a_mirror_url_naming_a_bucket_whose_keys_map_back():
    def mirror(url: str, **more) -> OriginBucket:
        return OriginBucket.of(rule_of({"RedirectType": "Mirror", "MirrorURL": url, **more}))

    assert mirror("https://s3.example.com/bucket/") == OriginBucket("https://s3.example.com", "bucket", "")
    assert mirror("http://h:9/bucket/some%20dir/p/") == OriginBucket("http://h:9", "bucket", "some dir/p/")
    for url, more, why in [("http://h:9/", {}, "names no bucket"), ("http://h:9/b/", {"ReplaceKeyWith": "x/${key}"}, "rewrites keys"),
                           ("http://10.0.0.1:9/b/", {"MirrorHost": "s3.example.com"}, "MirrorHost")]:
        with pytest.raises(NotAnS3Origin, match=why):
            mirror(url, **more)
    with pytest.raises(NotAnS3Origin, match="not a Mirror rule"):
        OriginBucket.of(rule_of({"RedirectType": "External", "HostName": "x.com"}))


# ---------------------------------------------------------------- keys


MIRROR_URLS = (
    "http://origin.example.com/",
    "https://origin.example.com:8443/dir1/sub/",
    "http://127.0.0.1:8000/a%20b/",
    "http://[::1]:9000/bucket/",
    "http://o/",
)
# the characters the README promises to encode, plus dots, slashes and escapes that look decoded
_TRICKY = st.sampled_from(
    ["/", "//", "%", "%2F", "%2e", "%25", "+", "@", "\\", "?", "#", "&", "=", ";", ":", " ", "~",
     "\x00", "\x01", "\t", "\r\n", "\x7f", "\x85", "\u2028", "é", "\u202e", "\ufeff", "😀",
     ".", "..", "...", ".a", "a.", "%2e%2e"]
)
_PIECES = st.lists(st.one_of(_TRICKY, st.text(max_size=6)), max_size=12).map("".join)
# keys over 1 KiB, built by repetition (one long draw would exhaust hypothesis's buffer)
_LONG = st.builds(lambda piece, extra: piece * (1025 // len(piece) + 1 + extra), st.text(min_size=1, max_size=12), st.integers(0, 40))
# keys as '/'-separated segments, dot segments and their look-alikes among them
_SEGMENTED = st.lists(
    st.one_of(st.sampled_from([".", "..", "", "...", ".a", "a.", "%2e", "%2e%2e", ". ", "\u2024", "\uff0e"]), _PIECES),
    min_size=1, max_size=6,
).map("/".join)
KEYS = st.one_of(st.text(), _PIECES, _SEGMENTED, _LONG)


def has_dot_segment(key: str) -> bool:
    return any(segment in (".", "..") for segment in key.split("/"))


@PROPERTY
@given(mirror=st.sampled_from(MIRROR_URLS), key=KEYS)
def test_origin_url_appends_the_exact_key_under_mirror_url(mirror, key):
    """For every key origin_url accepts: same scheme and host as MirrorURL, a path under
    MirrorURL's path, and percent-decoding what follows MirrorURL gives the key back
    byte for byte. The origin client (httpclient.absolute_url) sends the host and the path as they are."""
    assume(not has_dot_segment(key))
    url = origin_url(mirror, key)
    base, got = urlsplit(mirror), urlsplit(url)
    assert (got.scheme, got.netloc) == (base.scheme, base.netloc)
    assert got.path.startswith(base.path)
    assert (got.query, got.fragment) == ("", "")
    assert url.startswith(mirror) and url.isascii()
    assert unquote(url[len(mirror):], errors="strict") == key
    sent = absolute_url(url)
    assert (sent.scheme, sent.raw_host, sent.port) == (base.scheme, base.hostname, base.port or {"http": 80, "https": 443}[base.scheme])
    assert sent.raw_path_qs == got.path


@PROPERTY
@given(mirror=st.sampled_from(MIRROR_URLS), key=KEYS, query=st.text(alphabet=string.ascii_letters + string.digits + "%=&-_", max_size=20))
def test_origin_url_with_a_query_keeps_it_apart_from_the_key(mirror, key, query):
    assume(not has_dot_segment(key))
    url = origin_url(mirror, key, query)
    path = origin_url(mirror, key)
    assert url == (f"{path}?{query}" if query else path)
    assert absolute_url(url).raw_path_qs == urlsplit(url).path + (f"?{query}" if query else "")


@PROPERTY
@given(mirror=st.sampled_from(MIRROR_URLS), key=st.one_of(KEYS, _SEGMENTED))
def test_origin_url_refuses_exactly_the_keys_with_dot_segments(mirror, key):
    """UnsafeKey if and only if some '/'-separated segment is '.' or '..'."""
    try:
        origin_url(mirror, key)
    except UnsafeKey:
        refused = True
    else:
        refused = False
    assert refused == has_dot_segment(key)


def _mirror_rule(**redirect_fields) -> RoutingRule:
    condition = redirect_fields.pop("Condition", {})
    return RoutingRule.model_validate(
        {"RuleNumber": 1, "Condition": condition,
         "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/", **redirect_fields}}
    )


@st.composite
def rule_and_key(draw, pass_slashes: bool):
    """A Mirror rule with any of OSS's key rewrites, and a key the rule matches."""
    prefix = draw(st.one_of(st.just(""), _PIECES))
    fields = {"MirrorPassOriginalSlashes": pass_slashes, "Condition": {"KeyPrefixEquals": prefix}}
    rewrite = draw(st.sampled_from(["none", "with", "prefix"]))
    if rewrite == "with":
        fields["ReplaceKeyWith"] = draw(st.lists(st.one_of(_PIECES, st.just("${key}")), max_size=4).map("".join))
    elif rewrite == "prefix":
        fields["EnableReplacePrefix"] = True
        if draw(st.booleans()):
            fields["ReplaceKeyPrefixWith"] = draw(_PIECES)
    return _mirror_rule(**fields), prefix + draw(KEYS)


@PROPERTY
@given(rule_and_key(pass_slashes=False))
def test_origin_key_collapses_slashes_unless_told_otherwise(drawn):
    """MirrorPassOriginalSlashes false: never '//', never a leading '/'; only slashes go."""
    rule, key = drawn
    sent = origin_key(rule, key)
    assert "//" not in sent and not sent.startswith("/")
    assert sent.replace("/", "") == rule.rewritten_key(key).replace("/", "")


@PROPERTY
@given(rule_and_key(pass_slashes=True))
def test_origin_key_passes_original_slashes_verbatim(drawn):
    rule, key = drawn
    assert origin_key(rule, key) == rule.rewritten_key(key)


# ---------------------------------------------------------------- query strings

# written apart from the code: the parameters of a client's exchange with the store
_STORE_PARAMETERS = {"signature", "ossaccesskeyid", "awsaccesskeyid", "expires", "security-token", "x-id"}
SIGNING_NAMES = ("x-id", "Signature", "OSSAccessKeyId", "AWSAccessKeyId", "Expires", "security-token",
                 "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Security-Token", "x-amz-")


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def signs_the_request(name: str) -> bool:
    """The oracle, written apart from the code: ASCII case-insensitive, as S3 stores compare."""
    lowered = _ascii_lower(name)
    return lowered in _STORE_PARAMETERS or lowered.startswith("x-amz-")


@st.composite
def any_case(draw, name: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)


@st.composite
def client_encoded(draw, text: str) -> str:
    """`text` as some client might put it into a query string: each character either
    percent-encoded or (when that is unambiguous) literal; spaces sometimes as '+'."""
    out = []
    for char in text:
        literal_ok = char.isascii() and char.isprintable() and char not in "&=#%+ "
        if char == " " and draw(st.booleans()):
            out.append("+")
        elif literal_ok and draw(st.booleans()):
            out.append(char)
        else:
            out.append(quote(char, safe=""))
    return "".join(out)


PARAM_NAMES = st.one_of(
    st.sampled_from(SIGNING_NAMES).flatmap(any_case),
    st.sampled_from(SIGNING_NAMES).flatmap(any_case).map(lambda n: n + "x"),  # X-Amz-... with a suffix
    st.sampled_from(["Signature", "Expires"]).map(lambda n: " " + n),  # not the same name
    st.text(max_size=12),
)


@st.composite
def client_queries(draw):
    """(the parameters a client meant, the raw query string it sent)."""
    params = draw(st.lists(st.tuples(PARAM_NAMES, st.one_of(st.text(max_size=12), _PIECES)), max_size=8))
    params = [(n, v) for n, v in params if n or v]  # '=' alone is no parameter to anyone
    parts = []
    for name, value in params:
        encoded = draw(client_encoded(name))
        if value or draw(st.booleans()):
            encoded += "=" + draw(client_encoded(value))
        parts.append(encoded)
    return params, "&".join(parts)


@PROPERTY
@given(client_queries())
def test_passable_query_never_lets_a_signature_parameter_through(drawn):
    """Whatever the names and values: no Signature, OSSAccessKeyId, AWSAccessKeyId, Expires,
    security-token or X-Amz-* parameter (any case) reaches an origin; every other
    parameter does, in order, with its value."""
    params, raw = drawn
    query = passable_query(tutils.treq(path=f"/bucket/key?{raw}".encode()))
    assert query.isascii() and "#" not in query
    sent = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    assert not [name for name, _ in sent if signs_the_request(name)]
    # the code also drops names that only Unicode case mapping makes equal ('\u212a' is 'k')
    dropped = {n for n, _ in params if is_store_parameter(n)}
    assert sent == [(n, v) for n, v in params if n not in dropped]


def test_passable_query_with_a_non_utf8_escape_keeps_the_bytes():
    request = tutils.treq(path=b"/bucket/key?a=%FF&b=%C3&Signature=x")
    assert passable_query(request) == "a=%FF&b=%C3"


# ---------------------------------------------------------------- redirects

_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
HOST_NAMES = st.one_of(
    st.builds(lambda labels, port: ".".join(labels) + port,
              st.lists(_LABEL, min_size=1, max_size=4),
              st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))),
    st.sampled_from(["[::1]", "[::1]:8080", "[2001:db8::7]:443", "127.0.0.1:9000"]),
)


@st.composite
def redirect_rules(draw):
    fields = {"RedirectType": draw(st.sampled_from(["External", "AliCDN"])),
              "HostName": draw(HOST_NAMES),
              "HttpRedirectCode": draw(st.sampled_from([301, 302, 303, 307, 308])),
              "PassQueryString": draw(st.booleans())}
    if draw(st.booleans()):
        fields["Protocol"] = draw(st.sampled_from(["http", "https"]))
    rewrite = draw(st.sampled_from(["none", "with", "prefix"]))
    if rewrite == "with":
        fields["ReplaceKeyWith"] = draw(st.lists(st.one_of(_PIECES, st.just("${key}")), max_size=4).map("".join))
    elif rewrite == "prefix":
        fields["EnableReplacePrefix"] = True
        fields["ReplaceKeyPrefixWith"] = draw(_PIECES)
    return RoutingRule.model_validate({"RuleNumber": 1, "Redirect": fields})


@PROPERTY
@given(rule=redirect_rules(), key=KEYS, drawn=client_queries(), scheme=st.sampled_from(["http", "https"]))
def test_redirect_location_stays_on_host_name(rule, key, drawn, scheme):
    """With HostName set, the Location's host is HostName whatever the key or query."""
    request = tutils.treq(path=f"/bucket/k?{drawn[1]}".encode())
    target = redirect.location(rule, ObjectRef("bucket", key), request, scheme, "client.example:8080")
    parts = urlsplit(target)
    assert parts.netloc == rule.Redirect.HostName
    assert parts.scheme == (rule.Redirect.Protocol or scheme)
    assert parts.fragment == "" and target.isascii()
    named = urlsplit(f"//{rule.Redirect.HostName}")
    assert (parts.hostname, parts.port) == (named.hostname, named.port)
    assert unquote(parts.path[1:], errors="strict") == rule.rewritten_key(key)


@PROPERTY
@given(key=KEYS, bucket=st.text(min_size=1, max_size=20))
def test_redirect_location_without_host_name_stays_in_the_client_bucket(key, bucket):
    rule = RoutingRule.model_validate({"RuleNumber": 1, "Redirect": {"RedirectType": "External"}})
    target = redirect.location(rule, ObjectRef(bucket, key), tutils.treq(), "http", "client.example:8080")
    parts = urlsplit(target)
    assert parts.netloc == "client.example:8080"
    first, _, rest = parts.path[1:].partition("/")
    assert (unquote(first, errors="strict"), unquote(rest, errors="strict")) == (bucket, key)


def test_an_s3_origin_with_the_bucket_in_its_host_keeps_the_placeholder_in_its_endpoint():
    """https://${bucket}.HOST/: the bucket filled in is the rule's own, its host the one the
    origin's clients fill in (s3.clients.foreign_s3_client); ${bucket} elsewhere in a host is refused."""
    def mirror(url: str, bucket: str = "logs-a") -> OriginBucket:
        entry = {"Name": "*", "RoutingRules": [{"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": url}}]}
        return OriginBucket.of(parse_rules(json.dumps({"Buckets": [entry]}), "t").rules_for(bucket)[0])

    assert mirror("https://${bucket}.s3.example.com:8443/p/") == OriginBucket("https://${bucket}.s3.example.com:8443", "logs-a", "p/")
    assert mirror("http://${bucket}.old/${bucket}/", "a.b") == OriginBucket("http://${bucket}.old", "a.b", "a.b/")
    assert mirror("http://old/${bucket}/") == OriginBucket("http://old", "logs-a", "")
    for url in ("https://x${bucket}.s3.example.com/", "https://s3.${bucket}.example.com/", "https://${bucket}/"):
        with pytest.raises(RulesError, match="whole first label before a fixed domain"):  # refused for every rule
            mirror(url)
