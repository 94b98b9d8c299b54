"""The rules document: OSS RoutingRule field names, validated (pydantic: unknown fields are
errors), ordered and matched. Reading a file and wording its errors is backorigin.rules.parsing.

The document is JSON: {"Buckets": [{"Name": ..., "RoutingRules": [RoutingRule, ...]}]}.

Every value may be written as JSON has it (404, true, [404, 500]) or as OSS's API and SDKs
serialise it (numbers and booleans as strings, "404", "true", and TransparentMirrorResponseCodes
as one comma-separated string, "404,500"), so a configuration carried over from OSS loads as is.
One mechanism does it: the OssInt, OssBool and OssCodes types (rules.values).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from backorigin.rules.buckets import BUCKET_PLACEHOLDER, PatternIndex, check_placeholders, fill_in, pattern_prefix
from backorigin.rules.values import OssBool, OssCodes, OssInt
from backorigin.rules.vocabulary import MD5_ALWAYS_CHECKED, MIRROR_ONLY_FIELDS, REDIRECT_CODES, REDIRECT_ONLY_FIELDS

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
PROTECTED_PREFIXES = ("x-amz-", "x-oss-", "x-backorigin-")
# Sent with every origin request; a request that arrives with it has come back into a
# proxy (the origin's domain now points at the store) and is refused instead of recursing.
LOOP_HEADER = "x-backorigin-fetch"


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
    PassAll: OssBool = False
    Pass: tuple[HeaderName, ...] = ()
    Remove: tuple[str, ...] = ()
    Set: tuple[HeaderValue, ...] = ()

    @field_validator("Remove")
    @classmethod
    def _remove(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n.lower() for n in names)


class HeaderCondition(_Model):
    """IncludeHeader: the client's request has header Key whose value Equals / StartsWith / EndsWith."""

    Key: str = Field(min_length=1)
    Equals: str | None = None
    StartsWith: str | None = None
    EndsWith: str | None = None

    @model_validator(mode="after")
    def _one_test(self) -> HeaderCondition:
        if sum(v is not None for v in (self.Equals, self.StartsWith, self.EndsWith)) != 1:
            raise ValueError("give exactly one of Equals, StartsWith, EndsWith")
        return self

    def holds(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.Equals is not None:
            return value == self.Equals
        if self.StartsWith is not None:
            return value.startswith(self.StartsWith)
        return value.endswith(self.EndsWith or "")


class RuleCondition(_Model):
    KeyPrefixEquals: str = ""
    KeySuffixEquals: str = ""
    HttpErrorCodeReturnedEquals: OssInt | None = Field(default=None, ge=100, le=599)
    IncludeHeader: tuple[HeaderCondition, ...] = Field(default=(), max_length=5)


class OriginCredentials(_Model):
    """Credentials to sign origin GETs with AWS SigV4, so a private S3 bucket can be the origin."""

    AuthType: Literal["S3V4"]
    Region: str = Field(min_length=1)
    AccessKeyId: str = Field(min_length=1)
    AccessKeySecret: SecretStr


def _check_origin_url(url: str, bucket_placeholder: bool = False) -> str:
    parts = urlsplit(check_placeholders(url, bucket_placeholder))
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if parts.username or parts.password:
        raise ValueError(f"{url!r} carries credentials; they would leak into x-oss-tag, logs and metadata")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not have a query string or fragment")
    try:
        parts.port  # noqa: B018  # raises for a port that is not a number
    except ValueError:
        raise ValueError(f"{url!r} has a port that is not a number") from None
    return url


def _check_mirror_url(url: str) -> str:
    """MirrorURL and MirrorURLSlave: an origin URL ending in '/', where ${bucket} may stand for the bucket's name."""
    if not _check_origin_url(url, bucket_placeholder=True).endswith("/"):
        raise ValueError(f"{url!r} must end with '/' (the key is appended to it)")
    return url


def _check_host_name(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name (host or host:port, no scheme or path)")
    return host


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}(?::\d{{1,5}})?|\[[0-9A-Fa-f:.]+\](?::\d{{1,5}})?")
MirrorURLText = Annotated[str, AfterValidator(_check_mirror_url)]
HostText = Annotated[str, AfterValidator(_check_host_name)]


class RuleAction(_Model):
    """OSS's Redirect element: what a matching rule does."""

    RedirectType: Literal["Mirror", "External", "AliCDN"]
    PassQueryString: OssBool = False
    ReplaceKeyWith: str | None = None
    EnableReplacePrefix: OssBool = False
    ReplaceKeyPrefixWith: str | None = None
    # External / AliCDN
    HttpRedirectCode: OssInt = 302
    Protocol: Literal["http", "https"] | None = None
    HostName: HostText | None = None
    # Mirror
    MirrorURL: MirrorURLText | None = None
    MirrorURLSlave: MirrorURLText | None = None
    MirrorURLProbe: Annotated[str, AfterValidator(_check_origin_url)] | None = None
    MirrorSwitchAllErrors: OssBool = False
    MirrorPassQueryString: OssBool | None = None
    MirrorFollowRedirect: OssBool = True
    MirrorCheckMd5: OssBool = True  # false is refused: see _md5_is_checked
    MirrorHeaders: HeaderPolicy = Field(default_factory=HeaderPolicy)
    MirrorAllowHeadObject: OssBool = False
    MirrorPassOriginalSlashes: OssBool = False
    TransparentMirrorResponseCodes: OssCodes = ()
    MirrorProxyPass: OssBool = False
    MirrorUserLastModified: OssBool = False
    MirrorSaveOssMeta: OssBool = False
    MirrorAuth: OriginCredentials | None = None
    MirrorHost: HostText | None = None
    _mirror_url_template: str | None = PrivateAttr(default=None)  # MirrorURL as written, when ${bucket} was filled in

    @property
    def mirror_url_template(self) -> str | None:
        """MirrorURL as the rules file has it: with ${bucket}, in a rule filled in for a bucket."""
        return self._mirror_url_template or self.MirrorURL

    @field_validator("MirrorCheckMd5")
    @classmethod
    def _md5_is_checked(cls, value: bool) -> bool:
        if not value:
            raise ValueError(f"false is not supported: {MD5_ALWAYS_CHECKED}; remove the field or set it to true")
        return value

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> RuleAction:
        given = self.model_fields_set
        if self.is_mirror:
            if self.MirrorURL is None:
                raise ValueError("MirrorURL is required when RedirectType is Mirror")
            wrong = sorted(given & REDIRECT_ONLY_FIELDS)
            if wrong:
                raise ValueError(f"{', '.join(wrong)} applies only to External and AliCDN redirects")
        else:
            wrong = sorted(given & MIRROR_ONLY_FIELDS)
            if wrong:
                raise ValueError(f"{', '.join(wrong)} applies only when RedirectType is Mirror")
            if self.HttpRedirectCode not in REDIRECT_CODES:
                raise ValueError(f"HttpRedirectCode {self.HttpRedirectCode} is not one of {sorted(REDIRECT_CODES)}")
        if self.ReplaceKeyWith is not None and self.ReplaceKeyPrefixWith is not None:
            raise ValueError("ReplaceKeyWith and ReplaceKeyPrefixWith cannot both be set")
        if self.ReplaceKeyPrefixWith is not None and not self.EnableReplacePrefix:
            raise ValueError("ReplaceKeyPrefixWith needs EnableReplacePrefix: true")
        if self.MirrorURLProbe and not self.MirrorURLSlave:
            raise ValueError("MirrorURLProbe needs MirrorURLSlave (where to go when the probe fails)")
        return self

    @property
    def is_mirror(self) -> bool:
        return self.RedirectType == "Mirror"

    @property
    def passes_query(self) -> bool:
        """OSS: MirrorPassQueryString, when given, wins over PassQueryString for mirrors."""
        if self.is_mirror and self.MirrorPassQueryString is not None:
            return self.MirrorPassQueryString
        return self.PassQueryString


class RoutingRule(_Model):
    RuleNumber: OssInt = Field(ge=1)
    Condition: RuleCondition = Field(default_factory=RuleCondition)
    Redirect: RuleAction

    @model_validator(mode="after")
    def _mirror_acts_on_404(self) -> RoutingRule:
        code = self.Condition.HttpErrorCodeReturnedEquals
        if self.Redirect.is_mirror and code not in (None, 404):
            raise ValueError(
                "Condition.HttpErrorCodeReturnedEquals must be 404 or left out: a Mirror rule acts only on the store's 404"
            )
        return self

    @property
    def status_condition(self) -> int | None:
        """The store status this rule waits for; None: it decides before the store is asked."""
        return 404 if self.Redirect.is_mirror else self.Condition.HttpErrorCodeReturnedEquals

    def applies_to(self, method: str, mirror_heads: bool = False) -> bool:
        """GET always; HEAD for redirects, and for mirrors with MirrorAllowHeadObject or when
        the proxy answers every HEAD of a missing object (`mirror_heads`)."""
        if method == "GET":
            return True
        if method == "HEAD":
            return not self.Redirect.is_mirror or self.Redirect.MirrorAllowHeadObject or mirror_heads
        return False

    def matches_request(self, key: str, header: Callable[[str], str | None]) -> bool:
        cond = self.Condition
        return (
            key.startswith(cond.KeyPrefixEquals)
            and key.endswith(cond.KeySuffixEquals)
            and all(h.holds(header(h.Key)) for h in cond.IncludeHeader)
        )

    def for_bucket(self, bucket: str) -> RoutingRule:
        """The rule as it applies to `bucket`: ${bucket} in MirrorURL and MirrorURLSlave filled in."""
        action = self.Redirect
        urls = {name: fill_in(url, bucket) for name in ("MirrorURL", "MirrorURLSlave")
                if (url := getattr(action, name)) and BUCKET_PLACEHOLDER in url}
        if not urls:
            return self
        filled = action.model_copy(update=urls)
        if "MirrorURL" in urls:
            filled._mirror_url_template = action.MirrorURL
        return self.model_copy(update={"Redirect": filled})

    def unmet(self, key: str, method: str, header: Callable[[str], str | None], status: int | None,
              mirror_heads: bool = False) -> str | None:
        """The first of the rule's conditions that does not hold for this request (and the store's
        `status`, None before the store is asked), in words; None when they all hold. What
        `decide_after_store` and `first_request_match` test, said for a person (rules.plan.rules_tried)."""
        if not self.applies_to(method, mirror_heads):
            if method != "HEAD":
                return f"rules act on GET and HEAD, not {method}"
            return "a Mirror rule answers a HEAD only with MirrorAllowHeadObject (or backorigin_head_on_miss=object)"
        cond = self.Condition
        if not key.startswith(cond.KeyPrefixEquals):
            return f"KeyPrefixEquals {cond.KeyPrefixEquals!r}: the key does not start with it"
        if not key.endswith(cond.KeySuffixEquals):
            return f"KeySuffixEquals {cond.KeySuffixEquals!r}: the key does not end with it"
        for test in cond.IncludeHeader:
            value = header(test.Key)
            if not test.holds(value):
                how, wanted = next((how, v) for how, v in (("equal", test.Equals), ("start with", test.StartsWith),
                                                             ("end with", test.EndsWith)) if v is not None)
                got = "the request has none" if value is None else f"{value!r} does not {how} it"
                return f"IncludeHeader {test.Key} must {how} {wanted!r}: {got}"
        if status is not None and self.status_condition not in (None, status):
            if self.Redirect.is_mirror:
                return f"a Mirror rule acts on the store's 404 only; the store answered {status}"
            return f"HttpErrorCodeReturnedEquals {self.status_condition}: the store answered {status}"
        return None

    def rewritten_key(self, key: str) -> str:
        """The key a redirect points at or a mirror asks the origin for (OSS key replacement)."""
        action = self.Redirect
        if action.EnableReplacePrefix:
            return (action.ReplaceKeyPrefixWith or "") + key[len(self.Condition.KeyPrefixEquals):]
        if action.ReplaceKeyWith is not None:
            return action.ReplaceKeyWith.replace("${key}", key)
        return key


def _check_entry_name(name: str) -> str:
    pattern_prefix(name)  # ValueError for a misplaced '*'
    return name


class BucketRules(_Model):
    Name: Annotated[str, Field(min_length=1), AfterValidator(_check_entry_name)]  # a bucket's name, or a pattern (rules.buckets)
    RoutingRules: tuple[RoutingRule, ...]
    # backorigin's own: every write through the proxy is applied to the S3 origin too (rules.writethrough)
    WriteThrough: OssBool = False


class RulesDocument(_Model):
    Buckets: tuple[BucketRules, ...]


RESOLVED_KEPT = 4096  # buckets whose rules from a pattern entry are kept filled in (the least recently asked go)


@dataclass(frozen=True)
class RuleBook:
    """Rules per bucket, each list in ascending RuleNumber: `buckets` by exact name (${bucket}
    already filled in), `patterns` by pattern ("logs-*", "*"; as written). An exact name wins,
    then the longest matching prefix (rules.buckets)."""

    source: str
    buckets: Mapping[str, tuple[RoutingRule, ...]]
    patterns: Mapping[str, tuple[RoutingRule, ...]] = field(default_factory=dict)
    write_through: frozenset[str] = frozenset()  # the entries (bucket names or patterns) with WriteThrough
    _index: PatternIndex = field(init=False, repr=False, compare=False)
    _for_bucket: Callable[[str], tuple[RoutingRule, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", PatternIndex(self.patterns))
        # thread-safe (the sweep asks from threads); asked on every request, so filled in once per bucket
        object.__setattr__(self, "_for_bucket", lru_cache(maxsize=RESOLVED_KEPT)(self._fill_in))

    def entries(self) -> Iterator[tuple[str, tuple[RoutingRule, ...]]]:
        """Every entry of the rules file, by Name: buckets' own, then patterns."""
        yield from self.buckets.items()
        yield from self.patterns.items()

    def entry_for(self, bucket: str) -> str | None:
        """The Name of the entry whose rules apply to `bucket` (its own name, or a pattern)."""
        if bucket in self.buckets:
            return bucket
        return self._index.find(bucket)

    def rules_for(self, bucket: str) -> tuple[RoutingRule, ...]:
        found = self.buckets.get(bucket)
        if found is not None or not self.patterns:
            return found or ()
        return self._for_bucket(bucket)

    def _fill_in(self, bucket: str) -> tuple[RoutingRule, ...]:
        entry = self.entry_for(bucket)
        return tuple(rule.for_bucket(bucket) for rule in self.patterns[entry]) if entry is not None else ()

    def writes_through(self, bucket: str) -> bool:
        """Whether the entry that applies to `bucket` has WriteThrough."""
        return self.entry_for(bucket) in self.write_through if self.write_through else False

    def may_act_on(self, bucket: str, status: int) -> bool:
        """Whether a rule of the bucket may act once the store answered `status` (see decide_after_store)."""
        return any(rule.status_condition in (None, status) for rule in self.rules_for(bucket))

    def first_request_match(
        self, bucket: str, key: str, method: str, header: Callable[[str], str | None], mirror_heads: bool = False
    ) -> RoutingRule | None:
        """The first rule whose request conditions hold, whatever the store will answer."""
        return next(
            (r for r in self.rules_for(bucket) if r.applies_to(method, mirror_heads) and r.matches_request(key, header)),
            None,
        )

    def decide_after_store(
        self, bucket: str, key: str, method: str, header: Callable[[str], str | None], status: int,
        mirror_heads: bool = False,
    ) -> RoutingRule | None:
        """The first rule that matches the request and the store's status (404 means NoSuchKey)."""
        return next(
            (
                r for r in self.rules_for(bucket)
                if r.applies_to(method, mirror_heads) and r.matches_request(key, header)
                and r.status_condition in (None, status)
            ),
            None,
        )
