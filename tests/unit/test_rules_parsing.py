"""A corpus of realistic mistakes in rules files (tests/data/bad-rules/), each refused with
a message that names the file and, for a mistake inside a rule, the bucket and the RuleNumber.

tests/data/bad-rules/expected.json maps each file name to the text that must follow
"<path of the file>: " in the message, so the file, the place and the reason are pinned
together. A file added to the folder without an entry there fails the suite.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backorigin.rules.model import RuleBook, RulesError
from backorigin.rules.parsing import load_rules, parse_rules
from backorigin.rules.vocabulary import UNSUPPORTED_OSS_FIELDS
from tests.support import DATA

# Each property is stated in its test's docstring. Examples are drawn afresh on every run
# (database=None: no example database is kept); a failure prints the smallest example
# hypothesis found, which then belongs in a plain test next to the property.
PROPERTY = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

CORPUS = DATA / "bad-rules"
EXPECTED: dict[str, str] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
FILES = sorted(p.name for p in CORPUS.iterdir() if p.name != "expected.json")
# expectations about a rule's fields (Condition.*, Redirect.*, RuleNumber) must name the rule:
# by its RuleNumber, or by its place in the list when the RuleNumber itself cannot be read
INSIDE_A_RULE = re.compile(r"\b(?:Redirect|Condition|RuleNumber)\b")
NAMES_THE_RULE = re.compile(r'^bucket "[^"]+": (?:RuleNumber -?\d+|rule #\d+): ')


def refusal(path: Path) -> str:
    with pytest.raises(RulesError) as refused:
        load_rules(path)
    return str(refused.value)


def test_every_corpus_file_has_an_expectation_and_every_expectation_a_file():
    assert len(FILES) >= 20
    assert sorted(EXPECTED) == FILES


@pytest.mark.parametrize("name", FILES)
def test_bad_rules_file_is_refused_with_a_precise_message(name):
    path = CORPUS / name
    message = refusal(path)
    # one line per problem, each naming the file
    assert all(line.startswith(f"{path}: ") for line in message.splitlines()), message
    assert f"{path}: {EXPECTED[name]}" in message
    if INSIDE_A_RULE.search(EXPECTED[name]):
        assert NAMES_THE_RULE.match(EXPECTED[name]), f"expected.json: {name}: name the bucket and the RuleNumber"


# rule parsing, properties (hypothesis) ---------------------------------------------------------

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
