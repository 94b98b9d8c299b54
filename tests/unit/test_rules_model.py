"""Rules document: validation messages name file, bucket, RuleNumber and field; ordering; matching."""

from __future__ import annotations

import json

import pytest
from mitmproxy.test import tutils

from backorigin.rules import model as rules_module
from backorigin.rules.model import RoutingRule, RulesError
from backorigin.rules.parsing import load_rules, parse_rules
from backorigin.rules.plan import Act, plan_get
from backorigin.rules.vocabulary import xml_fields
from backorigin.s3.addressing import ObjectRef
from backorigin.tools.demo import SAMPLE_RULES
from tests.support import DATA


def GET(key: str):
    return tutils.treq(path=f"/photos/{key}".encode())

OSS_SDK_RULES = DATA / "oss-sdk-rules.json"


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
    book = load_rules(SAMPLE_RULES)
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
         "RuleNumber 3: field Redirect.MirrorFollowRedirect: 'yes' is neither true nor false"),
        (document({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorFollowRedirect": 0}),
         "RuleNumber 3: field Redirect.MirrorFollowRedirect: Input should be a valid boolean"),
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


# -- OSS's value forms: numbers and booleans as strings, status codes comma-separated ----------

# tests/data/oss-sdk-rules.json as JSON has it: the same configuration, every value in its natural form.
OSS_SDK_RULES_NATURAL = {"Buckets": [{"Name": "photos", "RoutingRules": [
    {
        "RuleNumber": 1,
        "Condition": {
            "KeyPrefixEquals": "img/", "KeySuffixEquals": ".jpg", "HttpErrorCodeReturnedEquals": 404,
            "IncludeHeader": [{"Key": "x-from", "Equals": "cdn"}],
        },
        "Redirect": {
            "RedirectType": "Mirror", "PassQueryString": True, "EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "images/",
            "MirrorURL": "https://origin.example.com/a/", "MirrorURLSlave": "https://backup.example.com/a/",
            "MirrorURLProbe": "https://origin.example.com/health", "MirrorSwitchAllErrors": True,
            "MirrorPassQueryString": False, "MirrorFollowRedirect": False, "MirrorCheckMd5": True,
            "MirrorHeaders": {
                "PassAll": True, "Pass": ["accept", "user-agent"], "Remove": ["cookie"],
                "Set": [{"Key": "x-migrated-by", "Value": "backorigin"}],
            },
            "MirrorAllowHeadObject": True, "MirrorPassOriginalSlashes": True, "TransparentMirrorResponseCodes": [404, 500],
            "MirrorProxyPass": False, "MirrorUserLastModified": True, "MirrorSaveOssMeta": True,
            "MirrorAuth": {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "AKIDEXAMPLE",
                           "AccessKeySecret": "wJalrXUtnFEMI/K7MDENG"},
        },
    },
    {
        "RuleNumber": 2,
        "Condition": {"KeyPrefixEquals": "docs/", "HttpErrorCodeReturnedEquals": 404},
        "Redirect": {
            "RedirectType": "External", "PassQueryString": False, "EnableReplacePrefix": True,
            "ReplaceKeyPrefixWith": "documents/", "HttpRedirectCode": 301, "Protocol": "https", "HostName": "docs.example.com",
        },
    },
    {
        "RuleNumber": 3,
        "Condition": {"KeyPrefixEquals": "cdn/"},
        "Redirect": {
            "RedirectType": "AliCDN", "PassQueryString": True, "EnableReplacePrefix": False, "ReplaceKeyWith": "static/${key}",
            "HttpRedirectCode": 307, "Protocol": "http", "HostName": "cdn.example.com",
        },
    },
    {
        "RuleNumber": 4,
        "Redirect": {
            "RedirectType": "Mirror", "MirrorURL": "http://origin.example.com/b/", "MirrorFollowRedirect": True,
            "TransparentMirrorResponseCodes": [],
        },
    },
]}]}
RULE_MODELS = (rules_module.RoutingRule, rules_module.RuleCondition, rules_module.HeaderCondition, rules_module.RuleAction,
               rules_module.HeaderPolicy, rules_module.HeaderValue, rules_module.OriginCredentials)
# the fields whose JSON-natural form is not a string: OSS's SDKs write each of them as one
NOT_STRINGS = {name for model in RULE_MODELS for name, f in xml_fields(model).items() if f.kind in ("bool", "int", "codes")}


def values_of(node, names: set[str]) -> list[tuple[str, object]]:
    """(field, value) for every occurrence of the named fields in a JSON document."""
    if isinstance(node, dict):
        return [(k, v) for k, v in node.items() if k in names] + [p for v in node.values() for p in values_of(v, names)]
    if isinstance(node, list):
        return [p for item in node for p in values_of(item, names)]
    return []


def test_the_oss_sdk_file_writes_every_non_string_field_as_a_string():
    assert NOT_STRINGS == {
        "RuleNumber", "HttpErrorCodeReturnedEquals", "HttpRedirectCode", "TransparentMirrorResponseCodes", "PassAll",
        "PassQueryString", "EnableReplacePrefix", "MirrorSwitchAllErrors", "MirrorPassQueryString", "MirrorFollowRedirect",
        "MirrorCheckMd5", "MirrorAllowHeadObject", "MirrorPassOriginalSlashes", "MirrorProxyPass",
        "MirrorUserLastModified", "MirrorSaveOssMeta",
    }
    given = values_of(json.loads(OSS_SDK_RULES.read_text()), NOT_STRINGS)
    assert {name for name, _ in given} == NOT_STRINGS
    assert all(isinstance(value, str) for _, value in given), [p for p in given if not isinstance(p[1], str)]
    natural = values_of(OSS_SDK_RULES_NATURAL, NOT_STRINGS)
    assert len(natural) == len(given) and not any(isinstance(value, str) for _, value in natural)


def test_a_rules_file_as_oss_sdks_serialise_it_loads_as_the_same_rules():
    sdk = load_rules(OSS_SDK_RULES)
    natural = parse_rules(json.dumps(OSS_SDK_RULES_NATURAL), "natural.json")
    assert sdk.buckets == natural.buckets
    rules = sdk.rules_for("photos")
    assert [type(r.RuleNumber) for r in rules] == [int] * 4
    assert rules[0].Redirect.TransparentMirrorResponseCodes == (404, 500)
    assert rules[3].Redirect.TransparentMirrorResponseCodes == ()


def test_a_rules_file_as_oss_sdks_serialise_it_behaves_the_same():
    sdk = load_rules(OSS_SDK_RULES)
    natural = parse_rules(json.dumps(OSS_SDK_RULES_NATURAL), "natural.json")
    from_cdn = {"x-from": "cdn"}.get
    no_headers = lambda _: None  # noqa: E731

    def found(rule: RoutingRule | None) -> RoutingRule:
        assert rule is not None
        return rule

    for book in (sdk, natural):
        mirror = found(book.decide_after_store("photos", "img/a.jpg", "GET", from_cdn, 404))
        assert mirror.RuleNumber == 1
        assert mirror.Redirect.passes_query is False  # MirrorPassQueryString "false" wins over PassQueryString "true"
        assert mirror.rewritten_key("img/a.jpg") == "images/a.jpg"
        assert mirror.Redirect.MirrorFollowRedirect is False and mirror.Redirect.MirrorHeaders.PassAll is True
        assert mirror.applies_to("HEAD")  # MirrorAllowHeadObject "true"
        assert found(book.decide_after_store("photos", "img/a.jpg", "GET", no_headers, 404)).RuleNumber == 4
        external = found(book.decide_after_store("photos", "docs/x", "GET", no_headers, 404))
        assert (external.RuleNumber, external.Redirect.HttpRedirectCode, external.rewritten_key("docs/x")) == (2, 301, "documents/x")
        assert plan_get(book, ObjectRef("photos", "docs/x"), GET("docs/x"), None).act is Act.ASK_STORE
        before = plan_get(book, ObjectRef("photos", "cdn/x"), GET("cdn/x"), None)
        cdn = found(before.rule)
        assert before.act is Act.REDIRECT
        assert (cdn.RuleNumber, cdn.Redirect.HttpRedirectCode, cdn.Redirect.passes_query) == (3, 307, True)


@pytest.mark.parametrize("written, value", [
    (True, True), (False, False), ("true", True), ("false", False), ("True", True), ("FALSE", False), (" true ", True),
])
def test_booleans_are_read_as_json_or_as_oss_sdks_write_them(written, value):
    rule = one_rule({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorAllowHeadObject": written,
                     "MirrorPassQueryString": written, "MirrorHeaders": {"PassAll": written}})
    assert rule.Redirect.MirrorAllowHeadObject is value
    assert rule.Redirect.MirrorPassQueryString is value
    assert rule.Redirect.MirrorHeaders.PassAll is value


@pytest.mark.parametrize("written", [False, "false", " FALSE "])
def test_mirror_check_md5_false_is_refused_saying_what_backorigin_does(written):
    with pytest.raises(RulesError, match=r'rules.json: bucket "photos": RuleNumber 3: field Redirect.MirrorCheckMd5: false is '
                                         r"not supported: backorigin always checks the origin's Content-MD5 .* set it to true"):
        one_rule({"RedirectType": "Mirror", "MirrorURL": "http://o/", "MirrorCheckMd5": written})
    assert one_rule({"RedirectType": "Mirror", "MirrorURL": "http://o/"}).Redirect.MirrorCheckMd5 is True


@pytest.mark.parametrize("number, status, code", [(7, 404, 301), ("7", "404", "301"), (" 7 ", " 404 ", " 301 "), ("07", "0404", "0301")])
def test_numbers_are_read_as_json_or_as_oss_sdks_write_them(number, status, code):
    text = document({"RedirectType": "External", "HttpRedirectCode": code}, {"HttpErrorCodeReturnedEquals": status}, RuleNumber=number)
    rule = parse_rules(text, "rules.json").rules_for("photos")[0]
    assert (rule.RuleNumber, rule.Condition.HttpErrorCodeReturnedEquals, rule.Redirect.HttpRedirectCode) == (7, 404, 301)


@pytest.mark.parametrize("written, codes", [
    ([404, 500], (404, 500)),
    (["404", "500"], (404, 500)),
    ("404,500", (404, 500)),
    (" 404 , 500 ", (404, 500)),
    ("503", (503,)),
    ("", ()),
    ([], ()),
])
def test_transparent_codes_are_read_as_a_list_or_as_osss_comma_separated_text(written, codes):
    rule = one_rule({"RedirectType": "Mirror", "MirrorURL": "http://o/", "TransparentMirrorResponseCodes": written})
    assert rule.Redirect.TransparentMirrorResponseCodes == codes


@pytest.mark.parametrize(
    "redirect, condition, rule, expected",
    [
        ({"MirrorCheckMd5": "yes"}, None, {}, "RuleNumber 3: field Redirect.MirrorCheckMd5: 'yes' is neither true nor false"),
        ({"MirrorCheckMd5": "1"}, None, {}, "field Redirect.MirrorCheckMd5: '1' is neither true nor false"),
        ({"MirrorHeaders": {"PassAll": ""}}, None, {}, "field Redirect.MirrorHeaders.PassAll: '' is neither true nor false"),
        ({"TransparentMirrorResponseCodes": "404,5xx"}, None, {},
         "RuleNumber 3: field Redirect.TransparentMirrorResponseCodes[1]: '5xx' is not a whole number"),
        ({"TransparentMirrorResponseCodes": "404 500"}, None, {},
         "field Redirect.TransparentMirrorResponseCodes[0]: '404 500' is not a whole number"),
        ({"TransparentMirrorResponseCodes": "404,302"}, None, {},
         "field Redirect.TransparentMirrorResponseCodes[1]: Input should be greater than or equal to 400"),
        ({"TransparentMirrorResponseCodes": ["404", "4.5"]}, None, {},
         "field Redirect.TransparentMirrorResponseCodes[1]: '4.5' is not a whole number"),
        ({"TransparentMirrorResponseCodes": 404}, None, {},
         'field Redirect.TransparentMirrorResponseCodes: give the codes as OSS does, "404,500", or as a list, [404, 500]'),
        ({}, {"HttpErrorCodeReturnedEquals": "404 Not Found"}, {},
         "RuleNumber 3: field Condition.HttpErrorCodeReturnedEquals: '404 Not Found' is not a whole number"),
        ({}, {"HttpErrorCodeReturnedEquals": "٤٠٤"}, {}, "field Condition.HttpErrorCodeReturnedEquals: '٤٠٤' is not a whole number"),
        ({}, {"HttpErrorCodeReturnedEquals": "403"}, {}, "Condition.HttpErrorCodeReturnedEquals must be 404 or left out"),
        ({}, None, {"RuleNumber": "0"}, "RuleNumber 0: field RuleNumber: Input should be greater than or equal to 1"),
        ({}, None, {"RuleNumber": "third"}, 'bucket "photos": rule #1: field RuleNumber: \'third\' is not a whole number'),
        ({}, None, {"RuleNumber": "1" * 19}, "rule #1: field RuleNumber: '1111111111111111111' is not a whole number"),
    ],
)
def test_bad_values_in_oss_form_name_file_bucket_rule_and_field(redirect, condition, rule, expected):
    text = document({"RedirectType": "Mirror", "MirrorURL": "http://o/", **redirect}, condition, **rule)
    message = error_of(text)
    assert message.startswith("rules.json: bucket \"photos\": ")
    assert expected in message


def test_a_redirect_code_in_oss_form_is_checked_like_a_number():
    text = document({"RedirectType": "External", "HttpRedirectCode": "200"})
    assert 'RuleNumber 3: field Redirect: HttpRedirectCode 200 is not one of [301, 302, 303, 307, 308]' in error_of(text)


def test_rule_numbers_in_both_forms_are_ordered_and_checked_for_duplicates_together():
    rules = [{"RuleNumber": n, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/"}} for n in ("10", 2, " 7")]
    book = parse_rules(json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": rules}]}), "r.json")
    assert [r.RuleNumber for r in book.rules_for("photos")] == [2, 7, 10]
    rules[1]["RuleNumber"] = "10"
    text = json.dumps({"Buckets": [{"Name": "photos", "RoutingRules": rules}]})
    assert 'bucket "photos": RuleNumber 10: field RuleNumber: used by more than one rule' in error_of(text)
