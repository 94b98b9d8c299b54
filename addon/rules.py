"""The rules document: OSS RoutingRule field names, validated, ordered and matched.

The file is JSON: {"Buckets": [{"Name": ..., "RoutingRules": [RoutingRule, ...]}]}.
Validation is pydantic's (unknown fields are errors); every error message names the
file, the bucket, the RuleNumber and the field, so a bad edit is found at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

# OSS allows 5 rules per bucket in the documents we follow, 20 today.
DEFAULT_MAX_RULES = 5
MAX_RULES_CEILING = 20

# Headers that belong to the client<->store exchange (credentials, framing, the
# range the client asked of the store) and are never sent to an origin, whatever
# a rule says.
PROTECTED_HEADERS = frozenset(
    {
        "authorization",
        "authorization2",
        "range",
        "content-length",
        "date",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
PROTECTED_PREFIXES = ("x-amz-", "x-oss-")


def is_protected_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in PROTECTED_HEADERS or lowered.startswith(PROTECTED_PREFIXES)


class RulesError(ValueError):
    """A rules file that cannot be used; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_header_name(name: str) -> str:
    if not name or any(c in name for c in " \t\r\n:"):
        raise ValueError(f"{name!r} is not an HTTP header name")
    if is_protected_header(name):
        raise ValueError(
            f"{name!r} is never sent to an origin (credentials, framing, range, "
            "date and x-amz-*/x-oss-* headers belong to the client and the store)"
        )
    return name.lower()


HeaderName = Annotated[str, AfterValidator(_check_header_name)]


class HeaderValue(_Model):
    Key: HeaderName
    Value: str

    @field_validator("Value")
    @classmethod
    def _value(cls, value: str) -> str:
        if any(c in value for c in "\r\n\0"):
            raise ValueError("a header value cannot contain CR, LF or NUL")
        return value


class HeaderPolicy(_Model):
    PassAll: bool = False
    Pass: tuple[HeaderName, ...] = ()
    Remove: tuple[str, ...] = ()
    Set: tuple[HeaderValue, ...] = ()

    @field_validator("Remove")
    @classmethod
    def _remove(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n.lower() for n in names)


class RuleCondition(_Model):
    KeyPrefixEquals: str = ""
    KeySuffixEquals: str = ""
    HttpErrorCodeReturnedEquals: int = 404

    @field_validator("HttpErrorCodeReturnedEquals")
    @classmethod
    def _mirror_only_on_404(cls, code: int) -> int:
        if code != 404:
            raise ValueError("mirror rules act only on the store's 404; use 404 or leave it out")
        return code


class RuleAction(_Model):
    RedirectType: Literal["Mirror"]
    MirrorURL: str
    MirrorPassQueryString: bool = False
    MirrorFollowRedirect: bool = True
    MirrorHeaders: HeaderPolicy = Field(default_factory=HeaderPolicy)

    @field_validator("MirrorURL")
    @classmethod
    def _mirror_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{url!r} must start with http:// or https://")
        if not parts.hostname:
            raise ValueError(f"{url!r} has no host")
        if parts.username or parts.password:
            raise ValueError(
                f"{url!r} carries credentials; they would leak into x-oss-tag, logs and metadata"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r} must not have a query string or fragment")
        if not url.endswith("/"):
            raise ValueError(f"{url!r} must end with '/' (the key is appended to it)")
        return url


class RoutingRule(_Model):
    RuleNumber: int = Field(ge=1)
    Condition: RuleCondition = Field(default_factory=RuleCondition)
    Redirect: RuleAction

    def matches(self, key: str, store_status: int) -> bool:
        cond = self.Condition
        return (
            store_status == cond.HttpErrorCodeReturnedEquals
            and key.startswith(cond.KeyPrefixEquals)
            and key.endswith(cond.KeySuffixEquals)
        )


class BucketRules(_Model):
    Name: str = Field(min_length=1)
    RoutingRules: tuple[RoutingRule, ...]


class RulesDocument(_Model):
    Buckets: tuple[BucketRules, ...]


@dataclass(frozen=True)
class RuleBook:
    """Rules per bucket, each list in ascending RuleNumber."""

    source: str
    buckets: Mapping[str, tuple[RoutingRule, ...]]

    def rules_for(self, bucket: str) -> tuple[RoutingRule, ...]:
        return self.buckets.get(bucket, ())

    def first_match(self, bucket: str, key: str, store_status: int) -> RoutingRule | None:
        return next(
            (r for r in self.rules_for(bucket) if r.matches(key, store_status)), None
        )


def load_rules(path: str | Path, max_rules: int = DEFAULT_MAX_RULES) -> RuleBook:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RulesError(f"{path}: cannot read the rules file: {e.strerror or e}") from e
    return parse_rules(text, str(path), max_rules)


def parse_rules(text: str, source: str, max_rules: int = DEFAULT_MAX_RULES) -> RuleBook:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise RulesError(f"{source}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from e
    try:
        document = RulesDocument.model_validate_json(text)
    except ValidationError as e:
        raise RulesError(
            "\n".join(_describe_error(source, raw, err) for err in e.errors())
        ) from None

    buckets: dict[str, tuple[RoutingRule, ...]] = {}
    for bucket in document.Buckets:
        where = f'{source}: bucket "{bucket.Name}"'
        if bucket.Name in buckets:
            raise RulesError(f"{where}: the bucket is listed twice; merge its RoutingRules")
        if len(bucket.RoutingRules) > max_rules:
            raise RulesError(
                f"{where}: field RoutingRules: {len(bucket.RoutingRules)} rules, "
                f"at most {max_rules} are allowed (backorigin_max_rules raises the limit "
                f"up to {MAX_RULES_CEILING})"
            )
        numbers = [r.RuleNumber for r in bucket.RoutingRules]
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        if repeated:
            raise RulesError(f"{where}: RuleNumber {repeated[0]}: field RuleNumber: used by more than one rule")
        buckets[bucket.Name] = tuple(sorted(bucket.RoutingRules, key=lambda r: r.RuleNumber))
    return RuleBook(source=source, buckets=buckets)


def _describe_error(source: str, raw: Any, err: Mapping[str, Any]) -> str:
    """Turn a pydantic error location into 'file: bucket "b": RuleNumber n: field F.G: why'."""
    loc = list(err["loc"])
    where = [source]
    field: list[str] = []
    node = raw
    for i, step in enumerate(loc):
        parent = loc[i - 1] if i else None
        if isinstance(step, int) and parent == "Buckets":
            name = _get(node, step, "Name")
            where.append(f'bucket "{name}"' if isinstance(name, str) else f"bucket #{step + 1}")
        elif isinstance(step, int) and parent == "RoutingRules":
            number = _get(node, step, "RuleNumber")
            where.append(f"RuleNumber {number}" if number is not None else f"rule #{step + 1}")
        elif isinstance(step, int):
            field.append(f"[{step}]")
        elif step not in ("Buckets", "RoutingRules") or i == len(loc) - 1:
            field.append(f".{step}" if field else str(step))
        node = node[step] if _has(node, step) else None
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field (check its spelling against the OSS RoutingRule names)"
    label = f"field {''.join(field)}: " if field else ""
    return f"{': '.join(where)}: {label}{message}"


def _has(node: Any, step: Any) -> bool:
    if isinstance(node, list):
        return isinstance(step, int) and 0 <= step < len(node)
    return isinstance(node, dict) and step in node


def _get(node: Any, index: int, name: str) -> Any:
    item = node[index] if _has(node, index) else None
    return item.get(name) if isinstance(item, dict) else None
