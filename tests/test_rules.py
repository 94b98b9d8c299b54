"""Rules document: validation messages name file, bucket, RuleNumber and field; ordering; matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addon.rules import RulesError, load_rules, parse_rules

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
