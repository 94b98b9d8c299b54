"""Property-based tests (hypothesis) of the pure parts: key -> origin URL, origin keys,
the query string an origin gets, redirect Locations, rule parsing and body checks.

Each property is stated in its test's docstring. Examples are drawn afresh on every run
(database=None: no example database is kept); a failure prints the smallest example
hypothesis found, which then belongs in a plain test next to the property (the plain tests
below are such examples, each once a real bug).
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import itertools
import json
import string
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from mitmproxy.test import tutils

from backorigin.miss.integrity import BodyCheck
from backorigin.miss.origin import (
    SIGNATURE_PARAMS,
    UnsafeKey,
    origin_key,
    origin_url,
    passable_query,
)
from backorigin.rules import targets as redirect
from backorigin.rules.model import (
    UNSUPPORTED_OSS_FIELDS,
    RoutingRule,
    RuleBook,
    RulesError,
    load_rules,
    parse_rules,
)
from backorigin.s3.addressing import ObjectRef

PROPERTY = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

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
    byte for byte. httpx (which sends it) keeps the host and the raw path as they are."""
    assume(not has_dot_segment(key))
    url = origin_url(mirror, key)
    base, got = urlsplit(mirror), urlsplit(url)
    assert (got.scheme, got.netloc) == (base.scheme, base.netloc)
    assert got.path.startswith(base.path)
    assert (got.query, got.fragment) == ("", "")
    assert url.startswith(mirror) and url.isascii()
    assert unquote(url[len(mirror):], errors="strict") == key
    sent = httpx.URL(url)
    assert (sent.scheme, sent.host, sent.port) == (base.scheme, base.hostname, base.port)
    assert sent.raw_path == got.path.encode("ascii")


@PROPERTY
@given(mirror=st.sampled_from(MIRROR_URLS), key=KEYS, query=st.text(alphabet=string.ascii_letters + string.digits + "%=&-_", max_size=20))
def test_origin_url_with_a_query_keeps_it_apart_from_the_key(mirror, key, query):
    assume(not has_dot_segment(key))
    url = origin_url(mirror, key, query)
    path = origin_url(mirror, key)
    assert url == (f"{path}?{query}" if query else path)
    assert httpx.URL(url).raw_path == urlsplit(url).path.encode() + (f"?{query}".encode() if query else b"")


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

SIGNING_NAMES = ("Signature", "OSSAccessKeyId", "AWSAccessKeyId", "Expires", "security-token",
                 "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Security-Token", "x-amz-")


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def signs_the_request(name: str) -> bool:
    """The oracle, written apart from the code: ASCII case-insensitive, as S3 stores compare."""
    lowered = _ascii_lower(name)
    return lowered in SIGNATURE_PARAMS or lowered.startswith("x-amz-")


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
    dropped = {n for n, _ in params if n.lower() in SIGNATURE_PARAMS or n.lower().startswith("x-amz-")}
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


# ---------------------------------------------------------------- rule parsing

SOURCE = "conf/rules.json"
FIELD_NAMES = sorted(
    {"Buckets", "Name", "RoutingRules", "RuleNumber", "Condition", "Redirect", "KeyPrefixEquals",
     "KeySuffixEquals", "HttpErrorCodeReturnedEquals", "IncludeHeader", "Key", "Equals", "StartsWith",
     "EndsWith", "RedirectType", "PassQueryString", "ReplaceKeyWith", "EnableReplacePrefix",
     "ReplaceKeyPrefixWith", "HttpRedirectCode", "Protocol", "HostName", "MirrorURL", "MirrorURLSlave",
     "MirrorURLProbe", "MirrorSwitchAllErrors", "MirrorPassQueryString", "MirrorFollowRedirect",
     "MirrorCheckMd5", "MirrorHeaders", "PassAll", "Pass", "Remove", "Set", "Value",
     "MirrorAllowHeadObject", "MirrorPassOriginalSlashes", "TransparentMirrorResponseCodes",
     "MirrorProxyPass", "MirrorUserLastModified", "MirrorSaveOssMeta", "MirrorAuth", "AuthType",
     "Region", "AccessKeyId", "AccessKeySecret", "MirrorHost"}
)
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.sampled_from(["Mirror", "External", "AliCDN", "http://o/", "http://o", "S3V4", "authorization", "a.example"]),
    st.sampled_from([1, 404, 302, 200, -1, 0]),
)
JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES + sorted(UNSUPPORTED_OSS_FIELDS)), st.text(max_size=8)),
                        children, max_size=6),
    ),
    max_leaves=25,
)


def parse_outcome(text: str, source: str = SOURCE):
    """parse_rules' answer: a RuleBook, or the RulesError's message. Anything else fails."""
    try:
        book = parse_rules(text, source)
    except RulesError as e:
        message = str(e)
        assert message.startswith(f"{source}: "), message
        event("RulesError")
        return message
    assert isinstance(book, RuleBook)
    event("RuleBook")
    return book


@PROPERTY
@given(JSON)
def test_parse_rules_on_any_json_answers_a_rulebook_or_a_rules_error(value):
    parse_outcome(json.dumps(value))


@PROPERTY
@given(st.one_of(st.text(), JSON.map(lambda v: json.dumps(v)[: len(json.dumps(v)) // 2])))
def test_parse_rules_on_any_text_answers_a_rulebook_or_a_rules_error(text):
    parse_outcome(text)


VALID_DOCUMENT = {"Buckets": [
    {"Name": "photos", "RoutingRules": [
        {"RuleNumber": 3,
         "Condition": {"KeyPrefixEquals": "images/", "KeySuffixEquals": ".jpg", "HttpErrorCodeReturnedEquals": 404,
                       "IncludeHeader": [{"Key": "x-client", "Equals": "app"}, {"Key": "user-agent", "StartsWith": "curl/"}]},
         "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://origin.example.com/dir1/",
                      "MirrorURLSlave": "https://backup.example.com/dir1/", "MirrorURLProbe": "http://origin.example.com/health",
                      "MirrorSwitchAllErrors": True, "MirrorPassQueryString": True, "MirrorFollowRedirect": False,
                      "MirrorCheckMd5": True, "MirrorAllowHeadObject": True, "MirrorPassOriginalSlashes": True,
                      "TransparentMirrorResponseCodes": [403, 500], "MirrorProxyPass": False,
                      "MirrorUserLastModified": True, "MirrorSaveOssMeta": True, "MirrorHost": "www.example.com",
                      "EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "img/",
                      "MirrorHeaders": {"PassAll": False, "Pass": ["a-header"], "Remove": ["b-header"],
                                        "Set": [{"Key": "c-header", "Value": "000"}]},
                      "MirrorAuth": {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "AK", "AccessKeySecret": "SK"}}},
        {"RuleNumber": 1,
         "Condition": {"KeyPrefixEquals": "docs/", "HttpErrorCodeReturnedEquals": 404},
         "Redirect": {"RedirectType": "External", "HostName": "old.example.com:8080", "Protocol": "https",
                      "HttpRedirectCode": 301, "PassQueryString": True, "ReplaceKeyWith": "moved/${key}"}}]},
    {"Name": "videos", "RoutingRules": [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "hidden/"},
         "Redirect": {"RedirectType": "AliCDN", "HttpRedirectCode": 307}},
        {"RuleNumber": 2, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "https://[::1]:9000/bucket/"}}]},
]}


def test_the_document_mutated_below_is_valid():
    book = parse_rules(json.dumps(VALID_DOCUMENT), SOURCE)
    assert isinstance(book, RuleBook) and set(book.buckets) == {"photos", "videos"}


def _locations(node, path=()):
    """Every (path, value) in a JSON document, the root included."""
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for step, child in items:
        yield from _locations(child, (*path, step))


def _json_type(value) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else type(value).__name__


def _at(document, path):
    for step in path:
        document = document[step]
    return document


@st.composite
def mutation(draw, document):
    """One realistic damage to `document`: drop a field, retype a value, add an unknown field.
    Returns (kind, path of the changed node's container, added field or None)."""
    places = list(_locations(document))
    fields = [p for p, _ in places if p and isinstance(p[-1], str)]
    kind = draw(st.sampled_from(["drop", "retype", "add"] if fields else ["add"]))
    if kind == "drop":
        path = draw(st.sampled_from(fields))
        del _at(document, path[:-1])[path[-1]]
        return kind, path[:-1], None
    if kind == "retype":
        path = draw(st.sampled_from([p for p, _ in places if p]))
        old = _at(document, path)
        new = draw(JSON.filter(lambda v: _json_type(v) != _json_type(old)))
        _at(document, path[:-1])[path[-1]] = new
        return kind, path[:-1], None
    path = draw(st.sampled_from([p for p, v in places if isinstance(v, dict)]))
    name = draw(st.one_of(st.sampled_from(sorted(UNSUPPORTED_OSS_FIELDS) + ["MirrorSpeed", "mirrorURL", "Mirror_URL"]),
                          st.text(min_size=1, max_size=10)).filter(lambda n: n not in FIELD_NAMES))
    _at(document, path)[name] = draw(JSON)
    return kind, path, name


@PROPERTY
@given(st.data())
def test_parse_rules_on_a_damaged_document_answers_a_rulebook_or_a_rules_error(data):
    document = copy.deepcopy(VALID_DOCUMENT)
    changes = [data.draw(mutation(document)) for _ in range(data.draw(st.integers(1, 3)))]
    outcome = parse_outcome(json.dumps(document))
    if len(changes) == 1 and changes[0][0] == "add":
        # an unknown field is always refused, and a refusal inside a rule names the rule
        _, path, name = changes[0]
        assert isinstance(outcome, str), f"{name!r} added at {path} was accepted"
        assert "unknown field" in outcome or "deliberately does not support" in outcome
        if len(path) >= 4 and path[2] == "RoutingRules":
            event("unknown field inside a rule")
            bucket, rule = VALID_DOCUMENT["Buckets"][path[1]], VALID_DOCUMENT["Buckets"][path[1]]["RoutingRules"][path[3]]
            assert f'{SOURCE}: bucket "{bucket["Name"]}": RuleNumber {rule["RuleNumber"]}: field ' in outcome


def test_parse_rules_on_deeply_nested_json_raises_rules_error():
    with pytest.raises(RulesError, match=f"^{SOURCE}: "):
        parse_rules('{"Buckets": ' + "[" * 5000 + "]" * 5000 + "}", SOURCE)


def test_parse_rules_on_a_huge_integer_raises_rules_error():
    huge = "1" + "0" * 5000
    with pytest.raises(RulesError, match=f"^{SOURCE}: "):
        parse_rules(f'{{"Buckets": [{{"Name": "p", "RoutingRules": [{{"RuleNumber": {huge}, '
                    '"Redirect": {"RedirectType": "External"}}]}]}', SOURCE)


def test_load_rules_on_a_file_that_is_not_utf8_raises_rules_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"Buckets": [{"Name": "caf\xe9", "RoutingRules": []}]}'.encode("latin-1"))
    with pytest.raises(RulesError, match=f"^{path}: "):
        load_rules(path)


# ---------------------------------------------------------------- body checks


def _md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def _fed(check: BodyCheck, body: bytes, cuts: list[int]) -> BodyCheck:
    bounds = [0, *sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    for start, end in itertools.pairwise(bounds):
        check.update(body[start:end])
    return check


def _verdict(check: BodyCheck) -> tuple:
    return check.md5_base64, check.size, check.failure(), check.mismatch()


PLAIN = st.binary(max_size=3000)
GZIPPED = PLAIN.map(lambda b: gzip.compress(b, mtime=0))
TRUNCATED_GZIP = GZIPPED.flatmap(lambda g: st.integers(0, len(g) - 1).map(lambda n: g[:n]))
# bytes after the gzip member: garbage, or a second member
TRAILING_GZIP = st.tuples(GZIPPED, st.one_of(st.binary(min_size=1, max_size=20), GZIPPED)).map(b"".join)
_HEADER_TEXT = st.text(alphabet=string.printable, max_size=30)


@PROPERTY
@given(
    body_and_gzip=st.one_of(st.tuples(PLAIN, st.booleans()), st.tuples(GZIPPED, st.just(True)),
                            st.tuples(TRUNCATED_GZIP, st.just(True)), st.tuples(TRAILING_GZIP, st.just(True))),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    content_length=st.one_of(st.none(), _HEADER_TEXT),
    content_md5=st.one_of(st.none(), _HEADER_TEXT),
    etag=st.one_of(st.none(), _HEADER_TEXT, st.binary(min_size=16, max_size=16).map(lambda d: f'"{d.hex()}"')),
)
def test_body_check_does_not_depend_on_chunking(body_and_gzip, cuts, content_length, content_md5, etag):
    body, gzipped = body_and_gzip
    headers = dict(content_length=content_length, content_md5=content_md5, etag=etag, gzip=gzipped)

    def new():
        headers = {"content-length": content_length, "content-md5": content_md5, "etag": etag,
                   "content-encoding": "gzip" if gzipped else None}
        return BodyCheck.for_headers({k: v for k, v in headers.items() if v is not None})  # None: no such header

    whole, chunked = _fed(new(), body, []), _fed(new(), body, cuts)
    assert _verdict(chunked) == _verdict(whole), headers
    assert (whole.md5_base64, whole.size) == (_md5_b64(body), len(body))


@st.composite
def correct_headers(draw, body: bytes):
    length = draw(st.sampled_from([str(len(body)), f" {len(body)} ", f"0{len(body)}"]))
    md5 = _md5_b64(body)
    return {"content-length": length,
            "content-md5": draw(st.sampled_from([md5, f" {md5} "])),
            "etag": draw(st.sampled_from([f'"{hashlib.md5(body).hexdigest()}"', hashlib.md5(body).hexdigest().upper(),
                                          '"d41d8cd98f00b204e9800998ecf8427e-2"', 'W/"x"', ""]))}


@PROPERTY
@given(st.one_of(PLAIN.map(lambda b: (b, False)), GZIPPED.map(lambda b: (b, True))).flatmap(
    lambda bg: st.tuples(st.just(bg), correct_headers(bg[0]), st.lists(st.integers(0, 10_000), max_size=10))))
def test_body_check_accepts_correct_headers(drawn):
    """A Content-Length and Content-MD5 (and MD5 ETag) that describe the body never fail."""
    (body, gzipped), headers, cuts = drawn
    check = _fed(BodyCheck.for_headers({**headers, "content-encoding": "gzip" if gzipped else ""}), body, cuts)
    assert (check.failure(), check.mismatch()) == ("", "")


WRONG_NUMBER_TEXT = st.one_of(
    st.sampled_from(["", " ", "-1", "+5", "5.0", "0x10", "1e3", "5 5", "five", "∞"]),
    st.text(alphabet=string.ascii_letters + "-+.,; ", min_size=1, max_size=10),
)


@PROPERTY
@given(body=PLAIN, cuts=st.lists(st.integers(0, 10_000), max_size=10),
       length=st.one_of(st.integers(0, 10**12).map(str), WRONG_NUMBER_TEXT))
def test_body_check_fails_on_a_wrong_content_length(body, cuts, length):
    assume(not (length.strip().isdigit() and int(length) == len(body)))
    check = _fed(BodyCheck(content_length=length), body, cuts)
    assert check.failure()


@PROPERTY
@given(body=PLAIN, cuts=st.lists(st.integers(0, 10_000), max_size=10),
       md5=st.one_of(st.binary(min_size=16, max_size=16).map(lambda d: base64.b64encode(d).decode()), st.text(min_size=1)))
def test_body_check_flags_a_wrong_content_md5(body, cuts, md5):
    assume(md5.strip() != _md5_b64(body))
    check = _fed(BodyCheck(content_md5=md5), body, cuts)
    assert check.mismatch() and not check.failure()


@pytest.mark.parametrize("length, body", [("²", b"xx"), ("①", b"x"), ("٥", b"12345"), ("\uff15", b"12345")])
def test_body_check_fails_on_a_content_length_in_non_ascii_digits(length, body):
    """str.isdigit() and int() accept these; HTTP's Content-Length is ASCII digits only."""
    assert _fed(BodyCheck(content_length=length), body, []).failure()


def test_body_check_fails_on_a_content_length_of_5000_digits():
    assert BodyCheck(content_length="1" * 5000).failure()
