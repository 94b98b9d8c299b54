"""Import and export of rules: OSS WebsiteConfiguration XML and AWS put-bucket-website JSON.

Pure functions. Each returns what it built together with warnings, one line per thing it
had to leave out and why, so nothing is dropped silently. The XML vocabulary is read off
the pydantic models (rules.vocabulary).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from pydantic import BaseModel

from backorigin import xmlsafe
from backorigin.rules.buckets import pattern_prefix
from backorigin.rules.model import (
    DEFAULT_MAX_RULES,
    MAX_RULES_CEILING,
    RoutingRule,
    RuleAction,
    RuleBook,
    RulesError,
)
from backorigin.rules.parsing import parse_rules, read_json
from backorigin.rules.values import oss_boolean, oss_codes, oss_integer
from backorigin.rules.vocabulary import (
    BACKORIGIN_ONLY_FIELDS,
    MD5_ALWAYS_CHECKED,
    MIRROR_ONLY_FIELDS,
    REDIRECT_ONLY_FIELDS,
    UNSUPPORTED_OSS_FIELDS,
    Kind,
    xml_fields,
)

T = TypeVar("T")

# OSS and AWS answer 301 when a redirect rule names no code; ours defaults to 302, so the code is
# always written out in both directions.
THEIR_DEFAULT_REDIRECT_CODE = 301
OSS_REDIRECT_CODES = frozenset({301, 302, 307})
# at most MAX_RULES_CEILING rules of a few KiB each: a document far larger is not a website configuration
WEBSITE_CONFIGURATION_LIMIT = 1024 * 1024

WEBSITE_ONLY = "backorigin serves no index or error pages (static-website hosting); configure them on the store"
DROPPED_WEBSITE_PARTS = {
    "IndexDocument": WEBSITE_ONLY,
    "ErrorDocument": WEBSITE_ONLY,
    "RedirectAllRequestsTo": (
        "redirecting a whole bucket is not a RoutingRule; an External rule with no Condition does the same"
    ),
}
AWS_REQUEST_PARAMETERS = frozenset({"ChecksumAlgorithm", "ContentMD5", "ExpectedBucketOwner"})


class ConversionError(RulesError):
    """Input that cannot be converted at all (not XML or JSON, wrong root, a bad value)."""


class Converted(NamedTuple, Generic[T]):
    value: T
    warnings: list[str]


def _why_dropped(name: str) -> str:
    if name in UNSUPPORTED_OSS_FIELDS:
        return f"an OSS field backorigin deliberately does not support: {UNSUPPORTED_OSS_FIELDS[name]}"
    if name in BACKORIGIN_ONLY_FIELDS:
        return f"{BACKORIGIN_ONLY_FIELDS[name]}; add it to rules.json by hand"
    return "not an OSS RoutingRule field backorigin knows"


# -- OSS XML -> rules ------------------------------------------------------------------------

def oss_xml_to_rules(text: str, bucket: str) -> Converted[dict[str, Any]]:
    """An OSS WebsiteConfiguration (GetBucketWebsite / PutBucketWebsite body) as our rules document."""
    root = _parse_xml(text)
    if _local(root.tag) != "WebsiteConfiguration":
        raise ConversionError(f"the XML root is <{_local(root.tag)}>, not <WebsiteConfiguration>")
    warnings: list[str] = []
    rules: list[dict[str, Any]] = []
    for child in root:
        name = _local(child.tag)
        if name == "RoutingRules":
            rules.extend(_xml_rules(child, warnings))
        elif name in DROPPED_WEBSITE_PARTS:
            warnings.append(f"{name} dropped: {DROPPED_WEBSITE_PARTS[name]}")
        else:
            warnings.append(f"{name} dropped: not part of an OSS WebsiteConfiguration")
    return Converted(_document(bucket, rules, warnings), warnings)


def _parse_xml(text: str) -> ET.Element:
    """A WebsiteConfiguration never needs a DTD, and entity declarations can expand without bound:
    both are refused (backorigin.xmlsafe), as is a document larger than any OSS would take."""
    try:
        return xmlsafe.parse(text, WEBSITE_CONFIGURATION_LIMIT)
    except xmlsafe.XMLRefused as e:
        why = str(e)
        if why.startswith("DOCTYPE"):
            why = "DOCTYPE and ENTITY declarations are refused in a WebsiteConfiguration"
        raise ConversionError(why) from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _dotted(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _xml_rules(container: ET.Element, warnings: list[str]) -> Iterable[dict[str, Any]]:
    for position, element in enumerate(container, start=1):
        if _local(element.tag) != "RoutingRule":
            warnings.append(f"RoutingRules.{_local(element.tag)} dropped: only RoutingRule elements belong there")
            continue
        number = element.findtext("{*}RuleNumber")
        label = f"RuleNumber {number.strip()}" if number else f"rule #{position}"
        rule = _read_element(element, RoutingRule, label, "", warnings)
        yield _without_inert_fields(rule, label, warnings)


def _read_element(element: ET.Element, model: type[BaseModel], label: str, path: str, warnings: list[str]) -> dict[str, Any]:
    if text := (element.text or "").strip():
        raise ConversionError(f"{label}: {path or 'RoutingRule'}: expected elements, found text {text!r}")
    fields = xml_fields(model)
    read: dict[str, Any] = {}
    for child in element:
        name = _local(child.tag)
        where = _dotted(path, name)
        field = fields.get(name)
        if field is None:
            warnings.append(f"{label}: {where} dropped: {_why_dropped(name)}")
        elif field.repeated:
            read.setdefault(name, []).append(_read_value(child, field.kind, label, where, warnings))
        elif name in read:
            raise ConversionError(f"{label}: {where} is given twice")
        else:
            read[name] = _read_value(child, field.kind, label, where, warnings)
    return {name: read[name] for name in fields if name in read}


def _read_value(element: ET.Element, kind: Kind, label: str, where: str, warnings: list[str]) -> Any:
    if not isinstance(kind, str):
        return _read_element(element, kind, label, where, warnings)
    if len(element):
        raise ConversionError(f"{label}: {where}: expected text, found <{_local(element[0].tag)}>")
    text = element.text or ""
    if kind == "bool":
        return _boolean(text, label, where)
    if kind == "int":
        return _integer(text, label, where)
    if kind == "codes":
        return [_integer(code, label, where) for code in oss_codes(text)]
    return text


# OSS's value forms are read by the functions the rules file's validation uses, so XML, the SDKs'
# JSON and rules.json agree on what "true", "404" and "404,500" mean.

def _boolean(text: str, label: str, where: str) -> bool:
    try:
        value = oss_boolean(text)
    except ValueError as e:
        raise ConversionError(f"{label}: {where}: {e}") from None
    return bool(value)


def _integer(value: str | int, label: str, where: str) -> int:
    try:
        number = oss_integer(value)
    except ValueError as e:
        raise ConversionError(f"{label}: {where}: {e}") from None
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    raise ConversionError(f"{label}: {where}: {value!r} is not a whole number")


def _without_inert_fields(rule: dict[str, Any], label: str, warnings: list[str]) -> dict[str, Any]:
    """Drop what OSS ignores for the rule's RedirectType (our validator refuses it) and give a
    redirect OSS's default code, 301, which differs from ours."""
    redirect = rule.get("Redirect")
    if not isinstance(redirect, dict) or "RedirectType" not in redirect:
        return rule
    inert = _inert_fields(redirect)
    for name, why in inert.items():
        warnings.append(f"{label}: Redirect.{name} dropped: {why}, and OSS ignores it here")
    kept = {name: value for name, value in redirect.items() if name not in inert}
    if kept.get("MirrorCheckMd5") is False:
        del kept["MirrorCheckMd5"]
        warnings.append(f"{label}: Redirect.MirrorCheckMd5 false dropped: {MD5_ALWAYS_CHECKED}")
    if redirect["RedirectType"] != "Mirror":
        kept.setdefault("HttpRedirectCode", THEIR_DEFAULT_REDIRECT_CODE)
    return {**rule, "Redirect": kept}


def _inert_fields(redirect: dict[str, Any]) -> dict[str, str]:
    if redirect["RedirectType"] == "Mirror":
        inert = dict.fromkeys(REDIRECT_ONLY_FIELDS, "it applies only to External and AliCDN redirects")
    else:
        inert = dict.fromkeys(MIRROR_ONLY_FIELDS, "it applies only when RedirectType is Mirror")
    if not redirect.get("EnableReplacePrefix"):
        inert["ReplaceKeyPrefixWith"] = "it is used only with EnableReplacePrefix true"
    return {name: inert[name] for name in redirect if name in inert}


# -- AWS JSON -> rules -----------------------------------------------------------------------

def aws_json_to_rules(text: str, bucket: str) -> Converted[dict[str, Any]]:
    """AWS CLI put-bucket-website JSON (--website-configuration or --cli-input-json) as our rules document."""
    try:
        data = read_json(text)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    warnings: list[str] = []
    config = _aws_website_configuration(data, bucket, warnings)
    raw_rules = config.get("RoutingRules", [])
    if not isinstance(raw_rules, list):
        raise ConversionError("RoutingRules must be a list")
    rules = [_aws_rule(raw, number, warnings) for number, raw in enumerate(raw_rules, start=1)]
    return Converted(_document(bucket, rules, warnings), warnings)


def _aws_website_configuration(data: Any, bucket: str, warnings: list[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConversionError("expected a JSON object (put-bucket-website --website-configuration or --cli-input-json)")
    if "Buckets" in data:
        raise ConversionError("this is already a backorigin rules document")
    if "WebsiteConfiguration" in data:
        for name, value in data.items():
            if name == "Bucket" and value != bucket:
                warnings.append(f"Bucket {value!r} ignored: the rules are written for --bucket {bucket!r}")
            elif name in AWS_REQUEST_PARAMETERS:
                warnings.append(f"{name} dropped: a put-bucket-website request parameter, not part of the rules")
            elif name not in ("Bucket", "WebsiteConfiguration"):
                warnings.append(f"{name} dropped: not a put-bucket-website parameter")
        data = data["WebsiteConfiguration"]
        if not isinstance(data, dict):
            raise ConversionError("WebsiteConfiguration must be a JSON object")
    elif not data.keys() & {"RoutingRules", *DROPPED_WEBSITE_PARTS}:
        raise ConversionError("neither a WebsiteConfiguration nor RoutingRules, IndexDocument or ErrorDocument")
    for name in data:
        if name in DROPPED_WEBSITE_PARTS:
            warnings.append(f"{name} dropped: {DROPPED_WEBSITE_PARTS[name]}")
        elif name != "RoutingRules":
            warnings.append(f"{name} dropped: not part of an AWS WebsiteConfiguration")
    return data


def _aws_rule(raw: Any, number: int, warnings: list[str]) -> dict[str, Any]:
    label = f"RuleNumber {number} (RoutingRules[{number - 1}])"
    if not isinstance(raw, dict):
        raise ConversionError(f"{label}: a routing rule must be a JSON object")
    for name in raw:
        if name not in ("Condition", "Redirect"):
            warnings.append(f"{label}: {name} dropped: not part of an AWS RoutingRule")
    rule: dict[str, Any] = {"RuleNumber": number}
    if "Condition" in raw:
        rule["Condition"] = _aws_condition(_json_object(raw["Condition"], label, "Condition"), label, warnings)
    rule["Redirect"] = _aws_redirect(_json_object(raw.get("Redirect"), label, "Redirect"), label, warnings)
    return rule


def _json_object(value: Any, label: str, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConversionError(f"{label}: {name} must be a JSON object")
    return value


def _aws_condition(raw: dict[str, Any], label: str, warnings: list[str]) -> dict[str, Any]:
    condition: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "KeyPrefixEquals":
            condition[name] = value
        elif name == "HttpErrorCodeReturnedEquals":
            condition[name] = _integer(value, label, f"Condition.{name}")
        else:
            warnings.append(f"{label}: Condition.{name} dropped: not part of an AWS routing rule Condition")
    return condition


def _aws_redirect(raw: dict[str, Any], label: str, warnings: list[str]) -> dict[str, Any]:
    # AWS routing rules are all plain 3xx redirects: OSS's External.
    redirect: dict[str, Any] = {"RedirectType": "External"}
    for name, value in raw.items():
        if name in ("HostName", "Protocol", "ReplaceKeyWith"):
            redirect[name] = value
        elif name == "ReplaceKeyPrefixWith":
            redirect["EnableReplacePrefix"] = True
            redirect[name] = value
        elif name == "HttpRedirectCode":
            redirect[name] = _integer(value, label, f"Redirect.{name}")
        else:
            warnings.append(f"{label}: Redirect.{name} dropped: not part of an AWS routing rule Redirect")
    redirect.setdefault("HttpRedirectCode", THEIR_DEFAULT_REDIRECT_CODE)
    return {name: redirect[name] for name in RuleAction.model_fields if name in redirect}


# -- either format, checked ------------------------------------------------------------------

def website_to_rules(text: str, bucket: str) -> Converted[dict[str, Any]]:
    """OSS XML or AWS JSON, told apart by content, as our rules document."""
    text = text.lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        return oss_xml_to_rules(text, bucket)
    if text.startswith(("{", "[")):
        return aws_json_to_rules(text, bucket)
    raise ConversionError("neither XML (OSS WebsiteConfiguration) nor JSON (AWS put-bucket-website)")


def checked_rules_json(document: dict[str, Any], source: str) -> Converted[str]:
    """The document as rules.json text, after the addon's own validation (RulesError if it would refuse it)."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    book = parse_rules(text, source, MAX_RULES_CEILING)
    warnings = [
        f'bucket "{name}": {len(rules)} rules, more than the {DEFAULT_MAX_RULES} allowed by default: '
        f"run mitmdump with --set backorigin_max_rules={len(rules)}"
        for name, rules in book.entries()
        if len(rules) > DEFAULT_MAX_RULES
    ]
    return Converted(text, warnings)


def _document(bucket: str, rules: list[dict[str, Any]], warnings: list[str]) -> dict[str, Any]:
    if not rules:
        warnings.append(f'no routing rules: bucket "{bucket}" would never be touched')
    return {"Buckets": [{"Name": bucket, "RoutingRules": rules}]}


# -- rules -> OSS XML ------------------------------------------------------------------------

def bucket_rules(book: RuleBook, bucket: str) -> Converted[tuple[RoutingRule, ...]]:
    """The rules that apply to `bucket`, to export: OSS configures every bucket on its own, so a
    pattern entry is refused, and a bucket a pattern applies to gets that entry's rules with a
    warning (${bucket} is filled in either way)."""
    if pattern_prefix(bucket) is not None:
        raise RulesError(f'{book.source}: "{bucket}" is a pattern; OSS has no bucket patterns: export each bucket it '
                         f"applies to (--bucket NAME), one configuration per bucket")
    entry = book.entry_for(bucket)
    if entry is None:
        listed = ", ".join(f'"{name}"' for name, _ in book.entries()) or "none"
        raise RulesError(f'{book.source}: bucket "{bucket}" is not in the rules file (buckets: {listed})')
    warnings = [] if entry == bucket else [
        f'bucket "{bucket}" has no entry of its own: the rules of the pattern entry "{entry}" are exported as they apply to it'
    ]
    return Converted(book.rules_for(bucket), warnings)


def export_bucket(book: RuleBook, bucket: str) -> Converted[str]:
    """One bucket's rules as OSS XML, with a warning for the bucket entry's own fields it leaves out."""
    rules, warnings = bucket_rules(book, bucket)
    xml, more = rules_to_oss_xml(rules)
    warnings += more
    if book.writes_through(bucket):
        warnings.insert(0, f"WriteThrough left out of the XML: {BACKORIGIN_ONLY_FIELDS['WriteThrough']}")
    return Converted(xml, warnings)


def rules_to_oss_xml(rules: Sequence[RoutingRule]) -> Converted[str]:
    """Validated rules as an OSS WebsiteConfiguration, ready for PutBucketWebsite."""
    warnings: list[str] = []
    root = ET.Element("WebsiteConfiguration")
    container = ET.SubElement(root, "RoutingRules")
    for rule in rules:
        _write_rule(ET.SubElement(container, "RoutingRule"), rule, warnings)
    ET.indent(root)
    return Converted('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n", warnings)


def _write_rule(element: ET.Element, rule: RoutingRule, warnings: list[str]) -> None:
    label = f"RuleNumber {rule.RuleNumber}"
    action = rule.Redirect
    if not action.is_mirror and action.HttpRedirectCode not in OSS_REDIRECT_CODES:
        warnings.append(
            f"{label}: Redirect.HttpRedirectCode {action.HttpRedirectCode} kept, "
            f"but OSS accepts only {', '.join(map(str, sorted(OSS_REDIRECT_CODES)))}"
        )
    _write_fields(element, rule, label, "", warnings)


def _write_fields(element: ET.Element, model: BaseModel, label: str, path: str, warnings: list[str]) -> None:
    given = _fields_to_write(model)
    for name in sorted(given & BACKORIGIN_ONLY_FIELDS.keys()):
        if getattr(model, name) is not None:
            warnings.append(f"{label}: {_dotted(path, name)} left out of the XML: {BACKORIGIN_ONLY_FIELDS[name]}")
    for name, field in xml_fields(type(model)).items():
        value = getattr(model, name)
        if name not in given or value is None:
            continue
        for item in value if field.repeated else (value,):
            _write_value(element, name, item, field.kind, label, _dotted(path, name), warnings)


def _fields_to_write(model: BaseModel) -> set[str]:
    """The fields the rules file gave, plus a redirect's code even when left to our default:
    OSS would otherwise answer with its own default, 301."""
    given = set(model.model_fields_set)
    if isinstance(model, RuleAction) and not model.is_mirror:
        given.add("HttpRedirectCode")
    return given


def _write_value(parent: ET.Element, name: str, value: Any, kind: Kind, label: str, path: str, warnings: list[str]) -> None:
    if kind == "codes":
        if value:
            ET.SubElement(parent, name).text = ",".join(str(code) for code in value)
        return
    element = ET.SubElement(parent, name)
    if isinstance(value, BaseModel):
        _write_fields(element, value, label, path, warnings)
    elif kind == "bool":
        element.text = "true" if value else "false"
    elif kind == "secret":
        element.text = value.get_secret_value()
    else:
        element.text = str(value)
