"""import-rules / export-rules: OSS WebsiteConfiguration XML and AWS put-bucket-website JSON to and
from rules.json, as pure functions and as the real command lines."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from backorigin.rules import model as rules_module
from backorigin.rules.convert import (
    ConversionError,
    aws_json_to_rules,
    bucket_rules,
    checked_rules_json,
    oss_xml_to_rules,
    rules_to_oss_xml,
    website_to_rules,
)
from backorigin.rules.model import MAX_RULES_CEILING, RulesError
from backorigin.rules.parsing import load_rules, parse_rules
from backorigin.rules.vocabulary import BACKORIGIN_ONLY_FIELDS, xml_fields
from backorigin.tools.demo import SAMPLE_RULES
from tests.support import DATA, REPO, Ran, run_cli
from tests.unit.test_rules_model import OSS_SDK_RULES, OSS_SDK_RULES_NATURAL

OSS_XML = DATA / "oss-website.xml"
AWS_JSON = DATA / "aws-website.json"
MD5_DROPPED = ("RuleNumber 1: Redirect.MirrorCheckMd5 false dropped: backorigin always checks the origin's Content-MD5 "
               "(and an ETag that is an MD5) and never stores a body that fails the check")
DROPPED_PAGES = [
    "IndexDocument dropped: backorigin serves no index or error pages (static-website hosting); configure them on the store",
    "ErrorDocument dropped: backorigin serves no index or error pages (static-website hosting); configure them on the store",
]

# What the OSS documentation's example means in our rules.json.
OSS_EXAMPLE_RULES = [
    {
        "RuleNumber": 1,
        "Condition": {"KeyPrefixEquals": "abc/", "HttpErrorCodeReturnedEquals": 404},
        "Redirect": {
            "RedirectType": "Mirror", "PassQueryString": True, "MirrorURL": "http://example.com/",
            "MirrorPassQueryString": True, "MirrorFollowRedirect": True,
            "MirrorHeaders": {
                "PassAll": True, "Pass": ["myheader-key1", "myheader-key2"], "Remove": ["myheader-key3", "myheader-key4"],
                "Set": [{"Key": "myheader-key5", "Value": "myheader-value5"}],
            },
        },
    },
    {
        "RuleNumber": 2,
        "Condition": {
            "KeyPrefixEquals": "abc/", "HttpErrorCodeReturnedEquals": 404,
            "IncludeHeader": [{"Key": "host", "Equals": "test.oss-cn-beijing-internal.aliyuncs.com"}],
        },
        "Redirect": {
            "RedirectType": "AliCDN", "Protocol": "http", "HostName": "example.com", "PassQueryString": False,
            "ReplaceKeyWith": "prefix/${key}.suffix", "HttpRedirectCode": 301,
        },
    },
    {
        "RuleNumber": 3,
        "Condition": {"HttpErrorCodeReturnedEquals": 404},
        "Redirect": {
            "RedirectType": "External", "ReplaceKeyWith": "prefix/${key}", "HttpRedirectCode": 302,
            "EnableReplacePrefix": False, "PassQueryString": False, "Protocol": "http", "HostName": "example.com",
        },
    },
]

# What the AWS documentation's three routing-rule examples mean in our rules.json.
AWS_EXAMPLE_RULES = [
    {
        "RuleNumber": 1,
        "Condition": {"KeyPrefixEquals": "docs/"},
        "Redirect": {
            "RedirectType": "External", "EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "documents/", "HttpRedirectCode": 301
        },
    },
    {
        "RuleNumber": 2,
        "Condition": {"KeyPrefixEquals": "images/"},
        "Redirect": {"RedirectType": "External", "ReplaceKeyWith": "folderdeleted.html", "HttpRedirectCode": 301},
    },
    {
        "RuleNumber": 3,
        "Condition": {"HttpErrorCodeReturnedEquals": 404},
        "Redirect": {
            "RedirectType": "External", "HostName": "ec2-11-22-333-44.compute-1.amazonaws.com",
            "EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "report-404/", "HttpRedirectCode": 301,
        },
    },
]

# Every field backorigin shares with OSS, each given explicitly, so the round trip is exact.
FULL_DOCUMENT = {"Buckets": [{"Name": "photos", "RoutingRules": [
    {
        "RuleNumber": 1,
        "Condition": {
            "KeyPrefixEquals": "img/", "KeySuffixEquals": ".jpg", "HttpErrorCodeReturnedEquals": 404,
            "IncludeHeader": [
                {"Key": "x-from", "Equals": "cdn"},
                {"Key": "user-agent", "StartsWith": "Mozilla/"},
                {"Key": "referer", "EndsWith": ".example.com/"},
            ],
        },
        "Redirect": {
            "RedirectType": "Mirror", "PassQueryString": True, "EnableReplacePrefix": True, "ReplaceKeyPrefixWith": "images/",
            "MirrorURL": "https://origin.example.com/a/", "MirrorURLSlave": "https://backup.example.com/a/",
            "MirrorURLProbe": "https://origin.example.com/health", "MirrorSwitchAllErrors": True,
            "MirrorPassQueryString": False, "MirrorFollowRedirect": False, "MirrorCheckMd5": True,
            "MirrorHeaders": {
                "PassAll": True, "Pass": ["accept", "user-agent"], "Remove": ["cookie", "host"],
                "Set": [{"Key": "x-migrated-by", "Value": "backorigin"}, {"Key": "x-empty", "Value": ""}],
            },
            "MirrorAllowHeadObject": True, "MirrorPassOriginalSlashes": True, "TransparentMirrorResponseCodes": [400, 404],
            "MirrorProxyPass": False, "MirrorUserLastModified": True, "MirrorSaveOssMeta": True,
            "MirrorAuth": {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "AKIDEXAMPLE", "AccessKeySecret": "s3cr&t<key>"},
        },
    },
    {
        "RuleNumber": 2,
        "Condition": {"KeyPrefixEquals": "docs/"},
        "Redirect": {
            "RedirectType": "External", "PassQueryString": True, "ReplaceKeyWith": "prefix/${key}.html",
            "HttpRedirectCode": 307, "Protocol": "https", "HostName": "docs.example.com:8443",
        },
    },
    {
        "RuleNumber": 3,
        "Condition": {},
        "Redirect": {"RedirectType": "AliCDN", "EnableReplacePrefix": True, "HttpRedirectCode": 301},
    },
]}]}


def stderr_lines(result: Ran) -> list[str]:
    return result.stderr.splitlines()


def document(bucket: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Buckets": [{"Name": bucket, "RoutingRules": rules}]}


def oss_xml(*rules: str, extra: str = "") -> str:
    body = "".join(f"<RoutingRule>{rule}</RoutingRule>" for rule in rules)
    return f"<WebsiteConfiguration>{extra}<RoutingRules>{body}</RoutingRules></WebsiteConfiguration>"


def mirror_rule_xml(number: int = 1, redirect: str = "", condition: str = "") -> str:
    return (
        f"<RuleNumber>{number}</RuleNumber><Condition>{condition}</Condition>"
        f"<Redirect><RedirectType>Mirror</RedirectType><MirrorURL>http://o.example/</MirrorURL>{redirect}</Redirect>"
    )


def book_of(doc: dict[str, Any]) -> rules_module.RuleBook:
    return parse_rules(json.dumps(doc), "rules.json", MAX_RULES_CEILING)


def export(doc: dict[str, Any], bucket: str = "photos") -> tuple[str, list[str]]:
    return rules_to_oss_xml(bucket_rules(book_of(doc), bucket).value)


def canonical(element: ET.Element) -> tuple:
    """Order of different elements does not matter in OSS XML; order of repeated ones does (stable sort)."""
    children = sorted((canonical(child) for child in element), key=lambda child: child[0])
    text = "" if len(element) else (element.text or "").strip()
    return (element.tag.rpartition("}")[2], text, tuple(children))


# -- OSS XML -> rules ------------------------------------------------------------------------

def test_oss_documentation_example_imports_with_its_three_rules():
    doc, warnings = oss_xml_to_rules(OSS_XML.read_text(), "photos")
    assert doc == document("photos", OSS_EXAMPLE_RULES)
    assert warnings == [*DROPPED_PAGES, MD5_DROPPED]
    checked, more = checked_rules_json(doc, "converted")
    assert json.loads(checked) == doc and more == []


def test_xml_values_are_typed_and_lists_are_repeated_or_comma_separated():
    xml = oss_xml(mirror_rule_xml(
        7,
        "<MirrorCheckMd5> TRUE </MirrorCheckMd5><TransparentMirrorResponseCodes>400, 404,500</TransparentMirrorResponseCodes>"
        "<MirrorHeaders><Pass>a</Pass><Pass>b</Pass></MirrorHeaders>",
        "<HttpErrorCodeReturnedEquals> 404 </HttpErrorCodeReturnedEquals>",
    ))
    rule = oss_xml_to_rules(xml, "b").value["Buckets"][0]["RoutingRules"][0]
    assert rule["RuleNumber"] == 7
    assert rule["Condition"] == {"HttpErrorCodeReturnedEquals": 404}
    assert rule["Redirect"]["MirrorCheckMd5"] is True
    assert rule["Redirect"]["TransparentMirrorResponseCodes"] == [400, 404, 500]
    assert rule["Redirect"]["MirrorHeaders"] == {"Pass": ["a", "b"]}


def test_namespaced_xml_is_read_like_plain_xml():
    xml = oss_xml(mirror_rule_xml()).replace("<WebsiteConfiguration>", '<WebsiteConfiguration xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">')
    doc, warnings = oss_xml_to_rules(xml, "b")
    assert doc["Buckets"][0]["RoutingRules"][0]["Redirect"]["MirrorURL"] == "http://o.example/"
    assert warnings == []


def test_unsupported_backorigin_only_and_unknown_fields_each_warn_with_the_reason():
    xml = oss_xml(
        mirror_rule_xml(
            2,
            "<MirrorRole>aliyun-role</MirrorRole>"
            "<MirrorMultiAlternates><MirrorMultiAlternate><MirrorMultiAlternateNumber>1</MirrorMultiAlternateNumber>"
            "</MirrorMultiAlternate></MirrorMultiAlternates>"
            "<MirrorHost>www.example.com</MirrorHost><MirrorAllowVideoSnapshot>false</MirrorAllowVideoSnapshot>"
            "<MirrorHeaders><Pass>a</Pass><Copy>b</Copy></MirrorHeaders>",
        ) + "<LuaConfig><Script>x.lua</Script></LuaConfig>",
        extra="<IndexDocument><Suffix>index.html</Suffix></IndexDocument>",
    )
    doc, warnings = oss_xml_to_rules(xml, "b")
    assert warnings == [
        DROPPED_PAGES[0],
        "RuleNumber 2: Redirect.MirrorRole dropped: an OSS field backorigin deliberately does not support: "
        "RAM roles exist only inside Alibaba Cloud; use MirrorAuth",
        "RuleNumber 2: Redirect.MirrorMultiAlternates dropped: an OSS field backorigin deliberately does not support: "
        "several alternate origins by region need OSS's own network; use MirrorURLSlave",
        "RuleNumber 2: Redirect.MirrorHost dropped: backorigin only (the Host header sent to the origin); "
        "OSS has no such field; add it to rules.json by hand",
        "RuleNumber 2: Redirect.MirrorAllowVideoSnapshot dropped: not an OSS RoutingRule field backorigin knows",
        "RuleNumber 2: Redirect.MirrorHeaders.Copy dropped: not an OSS RoutingRule field backorigin knows",
        "RuleNumber 2: LuaConfig dropped: an OSS field backorigin deliberately does not support: "
        "OSS runs Lua scripts on its own servers; there is no equivalent here",
    ]
    assert doc["Buckets"][0]["RoutingRules"][0]["Redirect"] == {
        "RedirectType": "Mirror", "MirrorURL": "http://o.example/", "MirrorHeaders": {"Pass": ["a"]},
    }
    checked_rules_json(doc, "converted")


def test_fields_oss_ignores_for_the_rule_type_are_dropped_with_a_warning():
    xml = oss_xml(
        mirror_rule_xml(1, "<HttpRedirectCode>301</HttpRedirectCode><HostName>example.com</HostName>"),
        "<RuleNumber>2</RuleNumber><Redirect><RedirectType>External</RedirectType><MirrorURL>http://o/</MirrorURL>"
        "<EnableReplacePrefix>false</EnableReplacePrefix><ReplaceKeyPrefixWith>x/</ReplaceKeyPrefixWith></Redirect>",
    )
    doc, warnings = oss_xml_to_rules(xml, "b")
    assert warnings == [
        "RuleNumber 1: Redirect.HttpRedirectCode dropped: it applies only to External and AliCDN redirects, and OSS ignores it here",
        "RuleNumber 1: Redirect.HostName dropped: it applies only to External and AliCDN redirects, and OSS ignores it here",
        "RuleNumber 2: Redirect.ReplaceKeyPrefixWith dropped: it is used only with EnableReplacePrefix true, and OSS ignores it here",
        "RuleNumber 2: Redirect.MirrorURL dropped: it applies only when RedirectType is Mirror, and OSS ignores it here",
    ]
    external = doc["Buckets"][0]["RoutingRules"][1]["Redirect"]
    # OSS answers 301 when no code is given; ours would be 302, so the code is written out.
    assert external == {"RedirectType": "External", "EnableReplacePrefix": False, "HttpRedirectCode": 301}
    checked_rules_json(doc, "converted")


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<WebsiteConfiguration><RoutingRules>", "not well-formed XML"),
        ("<RoutingRules/>", "the XML root is <RoutingRules>, not <WebsiteConfiguration>"),
        (oss_xml(mirror_rule_xml(1, "<MirrorCheckMd5>yes</MirrorCheckMd5>")),
         "RuleNumber 1: Redirect.MirrorCheckMd5: 'yes' is neither true nor false"),
        (oss_xml(mirror_rule_xml(1, "<MirrorURL>http://p/</MirrorURL>")), "RuleNumber 1: Redirect.MirrorURL is given twice"),
        (oss_xml("<RuleNumber>first</RuleNumber>"), "RuleNumber first: RuleNumber: 'first' is not a whole number"),
        (oss_xml(mirror_rule_xml(1, "<MirrorHeaders>all</MirrorHeaders>")),
         "RuleNumber 1: Redirect.MirrorHeaders: expected elements, found text 'all'"),
    ],
)
def test_unreadable_xml_is_an_error_not_a_guess(xml, message):
    with pytest.raises(ConversionError) as caught:
        oss_xml_to_rules(xml, "b")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "prolog",
    [
        '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>',
        '<!DOCTYPE WebsiteConfiguration SYSTEM "file:///etc/passwd">',
    ],
)
def test_doctype_and_entity_declarations_are_refused(prolog):
    headers = "<MirrorHeaders><Set><Key>k</Key><Value>&lol2;</Value></Set></MirrorHeaders>"
    xml = '<?xml version="1.0"?>' + prolog + oss_xml(mirror_rule_xml(1, headers))
    with pytest.raises(ConversionError, match="DOCTYPE and ENTITY declarations are refused"):
        oss_xml_to_rules(xml, "b")



MiB = 1024 * 1024


@pytest.mark.parametrize("filler", ["x", "\u00e9"])  # one byte a character, and two
def test_a_configuration_over_one_mebibyte_is_refused_naming_the_file(tmp_path, filler):
    """OSS takes no WebsiteConfiguration over 1 MiB, and nor does import-rules: exit status 2 and
    one line naming the file, before any parsing; the same document at the bound converts."""
    document = oss_xml(mirror_rule_xml(1))
    padding = "<!--" + filler * ((MiB - len(document.encode()) - len("<!---->")) // len(filler.encode())) + "-->"
    at_the_bound = tmp_path / "at-the-bound.xml"
    at_the_bound.write_text(document.replace("<RoutingRules>", padding + "<RoutingRules>"), encoding="utf-8")
    assert len(at_the_bound.read_bytes()) <= MiB
    done = run_cli("import-rules", at_the_bound, "--bucket", "b")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Buckets"][0]["RoutingRules"][0]["Redirect"]["MirrorURL"] == "http://o.example/"
    over = tmp_path / "over.xml"
    over.write_text(document.replace("<RoutingRules>", padding + filler * 2 + "<RoutingRules>"), encoding="utf-8")
    assert len(over.read_bytes()) > MiB
    refused = run_cli("import-rules", over, "--bucket", "b")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == f"{over}: larger than {MiB} bytes\n"


# -- AWS JSON -> rules -----------------------------------------------------------------------

def test_aws_documentation_examples_import_as_external_redirects_in_list_order():
    doc, warnings = aws_json_to_rules(AWS_JSON.read_text(), "site")
    assert doc == document("site", AWS_EXAMPLE_RULES)
    assert warnings == DROPPED_PAGES
    checked_rules_json(doc, "converted")


def test_aws_cli_input_json_form_is_read_too():
    cli_input = {
        "Bucket": "old-site", "ExpectedBucketOwner": "111122223333",
        "WebsiteConfiguration": json.loads(AWS_JSON.read_text()),
    }
    doc, warnings = aws_json_to_rules(json.dumps(cli_input), "site")
    assert doc == document("site", AWS_EXAMPLE_RULES)
    assert warnings == [
        "Bucket 'old-site' ignored: the rules are written for --bucket 'site'",
        "ExpectedBucketOwner dropped: a put-bucket-website request parameter, not part of the rules",
        *DROPPED_PAGES,
    ]


def test_aws_codes_become_numbers_and_unknown_or_whole_bucket_parts_warn():
    config = {
        "RedirectAllRequestsTo": {"HostName": "example.com"},
        "RoutingRules": [{
            "Condition": {"HttpErrorCodeReturnedEquals": "403", "KeySuffixEquals": ".html"},
            "Redirect": {"HttpRedirectCode": "307", "Protocol": "https", "Port": "8443"},
        }],
    }
    doc, warnings = aws_json_to_rules(json.dumps(config), "b")
    assert doc["Buckets"][0]["RoutingRules"] == [{
        "RuleNumber": 1,
        "Condition": {"HttpErrorCodeReturnedEquals": 403},
        "Redirect": {"RedirectType": "External", "HttpRedirectCode": 307, "Protocol": "https"},
    }]
    assert warnings == [
        "RedirectAllRequestsTo dropped: redirecting a whole bucket is not a RoutingRule; "
        "an External rule with no Condition does the same",
        "RuleNumber 1 (RoutingRules[0]): Condition.KeySuffixEquals dropped: not part of an AWS routing rule Condition",
        "RuleNumber 1 (RoutingRules[0]): Redirect.Port dropped: not part of an AWS routing rule Redirect",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "invalid JSON"),
        ("[]", "expected a JSON object"),
        ('{"Buckets": []}', "already a backorigin rules document"),
        ('{"Rules": []}', "neither a WebsiteConfiguration nor RoutingRules"),
        ('{"RoutingRules": [{"Condition": {"HttpErrorCodeReturnedEquals": "4o4"}, "Redirect": {}}]}',
         "RuleNumber 1 (RoutingRules[0]): Condition.HttpErrorCodeReturnedEquals: '4o4' is not a whole number"),
        ('{"RoutingRules": [{"Condition": {"KeyPrefixEquals": "a/"}}]}', "Redirect must be a JSON object"),
    ],
)
def test_unreadable_aws_json_is_an_error(text, message):
    with pytest.raises(ConversionError) as caught:
        aws_json_to_rules(text, "b")
    assert message in str(caught.value)


def test_format_is_told_by_content():
    assert website_to_rules("\ufeff\n  " + OSS_XML.read_text(), "b").value == document("b", OSS_EXAMPLE_RULES)
    assert website_to_rules(AWS_JSON.read_text(), "b").value == document("b", AWS_EXAMPLE_RULES)
    with pytest.raises(ConversionError, match="neither XML"):
        website_to_rules("RoutingRules: []", "b")


def test_checked_json_refuses_what_the_addon_would_refuse_and_warns_above_five_rules():
    bad = document("b", [{"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/dir"}}])
    with pytest.raises(RulesError, match=r'src: bucket "b": RuleNumber 1: field Redirect.MirrorURL: .* must end with'):
        checked_rules_json(bad, "src")
    seven = document("b", [{"RuleNumber": n, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/"}} for n in range(1, 8)])
    assert checked_rules_json(seven, "src").warnings == [
        'bucket "b": 7 rules, more than the 5 allowed by default: run mitmdump with --set backorigin_max_rules=7'
    ]
    many = document("b", [{"RuleNumber": n, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/"}} for n in range(1, 22)])
    with pytest.raises(RulesError, match="21 rules, at most 20"):
        checked_rules_json(many, "src")


# -- rules -> OSS XML and the round trips ----------------------------------------------------

def test_full_document_uses_every_field_shared_with_oss():
    models = (rules_module.RoutingRule, rules_module.RuleCondition, rules_module.HeaderCondition,
              rules_module.RuleAction, rules_module.HeaderPolicy, rules_module.HeaderValue, rules_module.OriginCredentials)
    shared = {name for model in models for name in model.model_fields} - BACKORIGIN_ONLY_FIELDS.keys()

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for value in node.values() for k in keys(value)}
        if isinstance(node, list):
            return {k for item in node for k in keys(item)}
        return set()

    assert shared <= keys(FULL_DOCUMENT)


def test_import_of_export_gives_our_document_back_exactly():
    xml, warnings = export(FULL_DOCUMENT)
    assert warnings == []
    assert "<TransparentMirrorResponseCodes>400,404</TransparentMirrorResponseCodes>" in xml
    assert "<AccessKeySecret>s3cr&amp;t&lt;key&gt;</AccessKeySecret>" in xml
    doc, warnings = oss_xml_to_rules(xml, "photos")
    assert doc == FULL_DOCUMENT
    assert warnings == []


def test_defaults_survive_the_round_trip_and_a_redirect_code_is_always_written():
    ours = document("photos", [
        {"RuleNumber": 4, "Redirect": {"RedirectType": "External", "HostName": "example.com"}},
        {"RuleNumber": 1, "Condition": {"HttpErrorCodeReturnedEquals": 404}, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/"}},
    ])
    xml, _ = export(ours)
    rules = ET.fromstring(xml).findall("RoutingRules/RoutingRule")
    assert [r.findtext("RuleNumber") for r in rules] == ["1", "4"]
    assert rules[0].find("Redirect/HttpRedirectCode") is None
    # OSS would answer 301 without it; ours is 302.
    assert rules[1].findtext("Redirect/HttpRedirectCode") == "302"
    assert book_of(oss_xml_to_rules(xml, "photos").value) == book_of(ours)


def test_backorigin_only_fields_and_codes_oss_refuses_warn_on_export():
    ours = document("photos", [
        {"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://10.0.0.5/", "MirrorHost": "www.example.com"}},
        {"RuleNumber": 2, "Redirect": {"RedirectType": "External", "HttpRedirectCode": 308}},
    ])
    xml, warnings = export(ours)
    assert "MirrorHost" not in xml
    assert warnings == [
        "RuleNumber 1: Redirect.MirrorHost left out of the XML: backorigin only (the Host header sent to the origin);"
        " OSS has no such field",
        "RuleNumber 2: Redirect.HttpRedirectCode 308 kept, but OSS accepts only 301, 302, 307",
    ]


def test_export_of_import_is_equivalent_to_the_oss_example():
    original = ET.fromstring(OSS_XML.read_text())
    for part in ("IndexDocument", "ErrorDocument"):
        element = original.find(part)
        assert element is not None, part
        original.remove(element)
    redirect = original.find("RoutingRules/RoutingRule/Redirect")
    check_md5 = redirect.find("MirrorCheckMd5") if redirect is not None else None
    assert redirect is not None and check_md5 is not None
    redirect.remove(check_md5)  # false is dropped on import (the check is always on)
    xml, warnings = export(oss_xml_to_rules(OSS_XML.read_text(), "photos").value)
    assert warnings == []
    assert canonical(ET.fromstring(xml)) == canonical(original)


def test_aws_rules_survive_export_and_import():
    imported = aws_json_to_rules(AWS_JSON.read_text(), "site").value
    xml, _ = export(imported, "site")
    assert oss_xml_to_rules(xml, "site") == (imported, [])


def test_rules_written_as_oss_sdks_serialise_them_export_as_the_json_natural_ones_in_osss_forms():
    sdk_book = load_rules(OSS_SDK_RULES)
    xml, warnings = rules_to_oss_xml(bucket_rules(sdk_book, "photos").value)
    assert warnings == []
    assert (xml, warnings) == export(OSS_SDK_RULES_NATURAL)
    rules = ET.fromstring(xml).findall("RoutingRules/RoutingRule")
    assert [r.findtext("RuleNumber") for r in rules] == ["1", "2", "3", "4"]
    assert rules[0].findtext("Condition/HttpErrorCodeReturnedEquals") == "404"
    assert rules[0].findtext("Redirect/TransparentMirrorResponseCodes") == "404,500"
    assert rules[0].findtext("Redirect/MirrorFollowRedirect") == "false"
    assert rules[0].findtext("Redirect/MirrorCheckMd5") == "true"
    assert rules[0].findtext("Redirect/MirrorHeaders/PassAll") == "true"
    assert rules[1].findtext("Redirect/HttpRedirectCode") == "301"
    assert rules[3].find("Redirect/TransparentMirrorResponseCodes") is None  # "" is no codes: nothing to write
    models = (rules_module.RoutingRule, rules_module.RuleCondition, rules_module.RuleAction, rules_module.HeaderPolicy)
    booleans = {name for model in models for name, field in xml_fields(model).items() if field.kind == "bool"}
    written = [(e.tag, e.text) for e in ET.fromstring(xml).iter() if e.tag in booleans]
    assert len(written) == 17 and all(text in ("true", "false") for _, text in written), written
    doc, warnings = oss_xml_to_rules(xml, "photos")
    assert warnings == []
    assert book_of(doc).buckets == sdk_book.buckets


def test_export_names_the_file_and_the_missing_bucket():
    with pytest.raises(RulesError, match=r'^rules.json: bucket "other" is not in the rules file \(buckets: "photos"\)$'):
        bucket_rules(book_of(FULL_DOCUMENT), "other")


# -- the command lines -----------------------------------------------------------------------

def test_cli_imports_the_oss_example(tmp_path):
    result = run_cli("import-rules", "--bucket", "photos", OSS_XML.relative_to(REPO))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == document("photos", OSS_EXAMPLE_RULES)
    assert stderr_lines(result) == [f"warning: tests/data/oss-website.xml: {w}" for w in [*DROPPED_PAGES, MD5_DROPPED]]
    saved = tmp_path / "rules.json"
    saved.write_text(result.stdout)
    load_rules(saved)


def test_cli_imports_aws_json_whatever_the_extension(tmp_path):
    renamed = tmp_path / "website.xml"
    renamed.write_text(AWS_JSON.read_text())
    result = run_cli("import-rules", "--bucket", "site", renamed)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == document("site", AWS_EXAMPLE_RULES)
    assert stderr_lines(result) == [f"warning: {renamed}: {w}" for w in DROPPED_PAGES]

    cli_input = tmp_path / "input.txt"
    cli_input.write_text(json.dumps({"Bucket": "site", "WebsiteConfiguration": json.loads(AWS_JSON.read_text())}))
    result = run_cli("import-rules", "--bucket", "site", cli_input)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == document("site", AWS_EXAMPLE_RULES)


def test_cli_import_warns_for_what_it_drops(tmp_path):
    source = tmp_path / "website.json"
    source.write_text(oss_xml(mirror_rule_xml(1, "<MirrorSNI>true</MirrorSNI>")))
    result = run_cli("import-rules", "--bucket", "b", source)
    assert result.returncode == 0, result.stderr
    assert stderr_lines(result) == [
        f"warning: {source}: RuleNumber 1: Redirect.MirrorSNI dropped: an OSS field backorigin deliberately "
        "does not support: the origin's TLS server name is always its host name"
    ]


def test_cli_import_warns_above_five_rules_and_refuses_above_twenty(tmp_path):
    source = tmp_path / "website.xml"
    source.write_text(oss_xml(*(mirror_rule_xml(n) for n in range(1, 9))))
    result = run_cli("import-rules", "--bucket", "b", source)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["Buckets"][0]["RoutingRules"]) == 8
    assert stderr_lines(result) == [
        f'warning: {source}: bucket "b": 8 rules, more than the 5 allowed by default: '
        "run mitmdump with --set backorigin_max_rules=8"
    ]
    source.write_text(oss_xml(*(mirror_rule_xml(n) for n in range(1, 22))))
    result = run_cli("import-rules", "--bucket", "b", source)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f'{source} (converted): bucket "b": field RoutingRules: 21 rules, at most 20 are allowed' in result.stderr


def test_cli_import_prints_nothing_the_addon_would_refuse(tmp_path):
    source = tmp_path / "website.xml"
    source.write_text(oss_xml(
        "<RuleNumber>3</RuleNumber><Redirect><RedirectType>Mirror</RedirectType><MirrorURL>http://o/dir</MirrorURL></Redirect>",
        extra="<ErrorDocument><Key>error.html</Key></ErrorDocument>",
    ))
    result = run_cli("import-rules", "--bucket", "b", source)
    assert result.returncode == 2
    assert result.stdout == ""
    assert stderr_lines(result) == [
        f"warning: {source}: {DROPPED_PAGES[1]}",
        f"{source} (converted): bucket \"b\": RuleNumber 3: field Redirect.MirrorURL: "
        "'http://o/dir' must end with '/' (the key is appended to it)",
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "e">]><WebsiteConfiguration/>',
         "DOCTYPE and ENTITY declarations are refused in a WebsiteConfiguration"),
        ("Bucket: photos", "neither XML (OSS WebsiteConfiguration) nor JSON (AWS put-bucket-website)"),
    ],
)
def test_cli_import_refuses_unusable_input(tmp_path, content, message):
    source = tmp_path / "website"
    source.write_text(content)
    result = run_cli("import-rules", "--bucket", "b", source)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"{source}: {message}\n")


def test_cli_import_of_a_missing_file_is_an_error(tmp_path):
    result = run_cli("import-rules", "--bucket", "b", tmp_path / "nowhere.xml")
    assert result.returncode == 2
    assert result.stderr.startswith(f"{tmp_path / 'nowhere.xml'}: cannot read the file: ")


def test_cli_round_trips_the_shipped_rules_file(tmp_path):
    exported = run_cli("export-rules", "--bucket", "example-bucket", SAMPLE_RULES)
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr == ""
    assert exported.stdout.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<WebsiteConfiguration>')
    xml = tmp_path / "website.xml"
    xml.write_text(exported.stdout)
    imported = run_cli("import-rules", "--bucket", "example-bucket", xml)
    assert imported.returncode == 0, imported.stderr
    assert imported.stderr == ""
    assert imported.stdout.endswith("}\n")  # a file ends with a newline
    assert book_of(json.loads(imported.stdout)).buckets == load_rules(SAMPLE_RULES).buckets


def test_cli_exports_a_rules_file_written_as_oss_sdks_serialise_it(tmp_path):
    exported = run_cli("export-rules", "--bucket", "photos", OSS_SDK_RULES.relative_to(REPO))
    assert (exported.returncode, exported.stderr) == (0, ""), exported.stderr
    assert "<TransparentMirrorResponseCodes>404,500</TransparentMirrorResponseCodes>" in exported.stdout
    assert exported.stdout == export(OSS_SDK_RULES_NATURAL)[0]
    xml = tmp_path / "website.xml"
    xml.write_text(exported.stdout)
    imported = run_cli("import-rules", "--bucket", "photos", xml)
    assert (imported.returncode, imported.stderr) == (0, ""), imported.stderr
    assert book_of(json.loads(imported.stdout)).buckets == load_rules(OSS_SDK_RULES).buckets


def test_cli_export_warns_about_backorigin_only_fields(tmp_path):
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(document("photos", [
        {"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://10.0.0.5/", "MirrorHost": "www.example.com"}},
    ])))
    result = run_cli("export-rules", "--bucket", "photos", rules_file)
    assert result.returncode == 0, result.stderr
    assert "MirrorHost" not in result.stdout
    assert stderr_lines(result) == [
        f"warning: {rules_file}: RuleNumber 1: Redirect.MirrorHost left out of the XML: "
        "backorigin only (the Host header sent to the origin); OSS has no such field"
    ]


def test_cli_export_errors_name_the_file_and_the_bucket(tmp_path):
    result = run_cli("export-rules", "--bucket", "photos", SAMPLE_RULES)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f'{SAMPLE_RULES}: bucket "photos" is not in the rules file (buckets: "example-bucket")\n'

    broken = tmp_path / "rules.json"
    broken.write_text(json.dumps(document("photos", [{"RuleNumber": 1, "Redirect": {"RedirectType": "Teleport"}}])))
    result = run_cli("export-rules", "--bucket", "photos", broken)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f'{broken}: bucket "photos": RuleNumber 1: field Redirect.RedirectType: ')
