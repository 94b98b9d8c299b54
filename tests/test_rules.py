"""Rules document: validation messages name file, bucket, RuleNumber and field; ordering; matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backorigin.rules import RoutingRule, RulesError, load_rules, parse_rules

REPO = Path(__file__).resolve().parent.parent


def document(redirect: dict | None = None, condition: dict | None = None, **rule) -> str:
    rule = {"RuleNumber": 3, "Redirect": redirect or {"RedirectType": "Mirror", "MirrorURL": "http://o/"}, **rule}
    if condition is not None:
        rule["Condition"] = condition
    return json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": [rule]}]})


def error_of(text: str, max_rules: int = 5) -> str:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "rules.json", max_rules)
    return str(caught.value)


def test_shipped_rules_json_is_valid():
    book = load_rules(REPO / "rules.json")
    assert list(book.buckets) == ["example-bucket"]


def test_rules_are_ordered_by_rule_number_not_file_order():
    rules = [
        {"RuleNumber": n, "Condition": {"KeyPrefixEquals": p}, "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"http://o{n}/"}}
        for n, p in ((9, ""), (2, "a/"), (5, "a/b/"))
    ]
    book = parse_rules(json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": rules}]}), "r.json")
    assert [r.RuleNumber for r in book.rules_for("photos")] == [2, 5, 9]
    def match(bucket, key, status):
        return book.decide_after_store(bucket, key, "GET", lambda _: None, status)

    assert match("photos", "a/b/c", 404).RuleNumber == 2
    assert match("photos", "z", 404).RuleNumber == 9
    assert match("photos", "z", 403) is None
    assert match("other", "z", 404) is None


def test_prefix_and_suffix_must_both_hold():
    book = parse_rules(document(condition={"KeyPrefixEquals": "img/", "KeySuffixEquals": ".jpg"}), "r.json")
    rule = book.rules_for("photos")[0]
    assert rule.matches_request("img/a.jpg", lambda _: None)
    assert not rule.matches_request("img/a.png", lambda _: None)
    assert not rule.matches_request("doc/a.jpg", lambda _: None)


@pytest.mark.parametrize(
    "text, expected",
    [
        (document({"RedirectType": "Teleport", "MirrorURL": "http://o/"}),
         "rules.json: bucket \"photos\": RuleNumber 3: field Redirect.RedirectType: Input should be 'Mirror'"),
        (document({"RedirectType": "Mirror"}),
         'rules.json: bucket "photos": RuleNumber 3: field Redirect: MirrorURL is required when RedirectType is Mirror'),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://o/dir"}),
         "RuleNumber 3: field Redirect.MirrorURL: 'http://o/dir' must end with '/'"),
        (document({"RedirectType": "Mirror", "MirrorURL": "ftp://o/"}), "must start with http:// or https://"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://u:p@o/"}), "carries credentials"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://o/?a=1"}), "must not have a query string"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http:///x/"}), "has no host"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorFollowRedirect": "yes"}),
         "field Redirect.MirrorFollowRedirect: Input should be a valid boolean"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorHeaders": {"Pass": ["Authorization"]}}),
         "field Redirect.MirrorHeaders.Pass[0]: 'Authorization' is never sent to an origin"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorHeaders": {"Set": [{"Key": "x-amz-date", "Value": "1"}]}}),
         "field Redirect.MirrorHeaders.Set[0].Key: 'x-amz-date' is never sent to an origin"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorHeaders": {"Set": [{"Key": "a", "Value": "x\r\nb: c"}]}}),
         "field Redirect.MirrorHeaders.Set[0].Value: a header value cannot contain CR, LF or NUL"),
        (document(condition={"KeyPrefix": "a/"}),
         'rules.json: bucket "photos": RuleNumber 3: field Condition.KeyPrefix: unknown field'),
        (document(condition={"HttpErrorCodeReturnedEquals": 403}),
         "RuleNumber 3: Condition.HttpErrorCodeReturnedEquals must be 404 or left out"),
        (document(RuleNumber=0), "RuleNumber 0: field RuleNumber: Input should be greater than or equal to 1"),
        (json.dumps({"Buckets": [{"RoutingRules": []}]}), "rules.json: bucket #1: field Name: Field required"),
        (json.dumps({"Buckets": [], "Version": 2}), "rules.json: field Version: unknown field"),
        ('{"Buckets": [\n  {"Name": "x",}\n]}', "rules.json: line 2 column 16: invalid JSON: Expecting property name"),
    ],
)
def test_bad_documents_name_file_bucket_rule_and_field(text, expected):
    assert expected in error_of(text)


def test_every_error_is_reported_not_just_the_first():
    text = json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": [
        {"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror"}},
        {"RuleNumber": 2, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/x"}},
    ]}]})
    message = error_of(text)
    assert "RuleNumber 1: field Redirect: MirrorURL is required when RedirectType is Mirror" in message
    assert "RuleNumber 2: field Redirect.MirrorURL: 'http://o/x' must end with '/'" in message


def test_rule_count_limit_and_duplicates():
    rules = [{"RuleNumber": n, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/"}} for n in range(1, 7)]
    text = json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": rules}]})
    assert 'bucket "photos": field RoutingRules: 6 rules, at most 5 are allowed' in error_of(text)
    assert len(parse_rules(text, "r.json", max_rules=20).rules_for("photos")) == 6
    rules[5]["RuleNumber"] = 1
    text = json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": rules}]})
    assert 'RuleNumber 1: field RuleNumber: used by more than one rule' in error_of(text, max_rules=20)
    twice = json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": []}] * 2})
    assert 'bucket "photos": the bucket is listed twice' in error_of(twice)


def test_unreadable_file_names_the_file(tmp_path):
    with pytest.raises(RulesError, match=f"{tmp_path}/nope.json: cannot read the rules file"):
        load_rules(tmp_path / "nope.json")


def one_rule(redirect: dict, condition: dict | None = None):
    return parse_rules(document(redirect, condition), "rules.json").rules_for("photos")[0]


@pytest.mark.parametrize(
    "redirect, expected",
    [
        ({"RedirectType": "External", "MirrorURL": "http://o/"}, "field Redirect: MirrorURL applies only when RedirectType is Mirror"),
        ({"RedirectType": "Mirror", "MirrorURL": "http://o/", "HostName": "x.com"}, "HostName applies only to External and AliCDN"),
        ({"RedirectType": "External", "HttpRedirectCode": 200}, "HttpRedirectCode 200 is not one of [301, 302, 303, 307, 308]"),
        ({"RedirectType": "External", "HostName": "http://x.com/"}, "field Redirect.HostName: 'http://x.com/' is not a host name"),
        ({"RedirectType": "External", "Protocol": "ftp"}, "field Redirect.Protocol: Input should be 'http' or 'https'"),
        ({"RedirectType": "External", "ReplaceKeyWith": "a", "ReplaceKeyPrefixWith": "b", "EnableReplacePrefix": True},
         "ReplaceKeyWith and ReplaceKeyPrefixWith cannot both be set"),
        ({"RedirectType": "External", "ReplaceKeyPrefixWith": "b"}, "ReplaceKeyPrefixWith needs EnableReplacePrefix: true"),
        ({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorURLProbe": "http://o/health"}, "MirrorURLProbe needs MirrorURLSlave"),
        ({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorURLSlave": "http://p/x"},
         "field Redirect.MirrorURLSlave: 'http://p/x' must end with '/'"),
        ({"RedirectType": "Mirror", "MirrorURL": "http://o/", "TransparentMirrorResponseCodes": [200]},
         "field Redirect.TransparentMirrorResponseCodes[0]: Input should be greater than or equal to 400"),
        ({"RedirectType": "Mirror", "MirrorURL": "http://o/",
          "MirrorAuth": {"AuthType": "OSS", "Region": "r", "AccessKeyId": "a", "AccessKeySecret": "s"}},
         "field Redirect.MirrorAuth.AuthType: Input should be 'S3V4'"),
        ({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorRole": "arn"},
         "field Redirect.MirrorRole: an OSS field backorigin deliberately does not support: RAM roles"),
        ({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorMultiAlternates": {}},
         "field Redirect.MirrorMultiAlternates: an OSS field backorigin deliberately does not support"),
    ],
)
def test_vocabulary_errors(redirect, expected):
    assert expected in error_of(document(redirect))


def test_include_header_needs_exactly_one_test():
    text = document({"RedirectType": "External"}, {"IncludeHeader": [{"Key": "a", "Equals": "1", "StartsWith": "1"}]})
    assert "field Condition.IncludeHeader[0]: give exactly one of Equals, StartsWith, EndsWith" in error_of(text)


def test_secrets_never_show_in_reprs():
    rule = one_rule({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorAuth": {
        "AuthType": "S3V4", "Region": "r", "AccessKeyId": "AKID", "AccessKeySecret": "very-secret"}})
    assert "very-secret" not in repr(rule) and "very-secret" not in str(rule.model_dump())
    assert rule.Redirect.MirrorAuth.AccessKeySecret.get_secret_value() == "very-secret"


@pytest.mark.parametrize(
    "redirect, key, expected",
    [
        ({"ReplaceKeyWith": "prefix/${key}.suffix"}, "abc/test.txt", "prefix/abc/test.txt.suffix"),
        ({"ReplaceKeyWith": "error.html"}, "abc/test.txt", "error.html"),
        ({"EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "def/"}, "abc/test.txt", "def/test.txt"),
        ({"EnableReplacePrefix": True}, "abc/test.txt", "test.txt"),  # OSS: no replacement -> prefix cut
        ({}, "abc/test.txt", "abc/test.txt"),
    ],
)
def test_key_rewriting_follows_oss(redirect, key, expected):
    rule = one_rule({"RedirectType": "External", **redirect}, {"KeyPrefixEquals": "abc/"})
    assert rule.rewritten_key(key) == expected


def test_which_rules_decide_before_the_store_is_asked():
    rules = [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "a/"}, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/"}},
        {"RuleNumber": 2, "Condition": {"KeyPrefixEquals": ""}, "Redirect": {"RedirectType": "External", "HostName": "x.com"}},
        {"RuleNumber": 3, "Condition": {"HttpErrorCodeReturnedEquals": 500}, "Redirect": {"RedirectType": "External"}},
    ]
    book = parse_rules(json.dumps({"Buckets": [{"Name": "b", "RoutingRules": rules}]}), "r.json")
    no_headers = lambda _: None  # noqa: E731

    def number(rule: RoutingRule | None) -> int | None:
        return None if rule is None else rule.RuleNumber

    assert book.decide_before_store("b", "a/x", "GET", no_headers) is None  # rule 1 needs the 404 first
    assert number(book.decide_before_store("b", "z", "GET", no_headers)) == 2
    assert number(book.decide_after_store("b", "a/x", "GET", no_headers, 404)) == 1
    assert number(book.decide_after_store("b", "a/x", "GET", no_headers, 200)) == 2
    assert number(book.decide_after_store("b", "a/x", "HEAD", no_headers, 404)) == 2  # no HEAD mirroring
    assert book.decide_before_store("b", "z", "PUT", no_headers) is None
