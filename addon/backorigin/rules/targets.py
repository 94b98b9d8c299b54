"""Where a rule sends a request, built from the rule and the client's request. Pure.

- A Mirror rule: the origin request (`build_request`: MirrorURL + key, the headers its
  MirrorHeaders allow, the query when it passes one, the secondary origin), and, when its
  MirrorURL is an S3 bucket, that bucket (`OriginBucket`).
- A redirect rule (External, AliCDN): the Location (`location`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from mitmproxy import http

from backorigin.rules.buckets import BUCKET_PLACEHOLDER
from backorigin.rules.model import LOOP_HEADER, OriginCredentials, RoutingRule, is_protected_header
from backorigin.s3.addressing import ObjectRef, host_bucket_base, is_store_parameter

# OSS adds a header for Alibaba Cloud CDN to AliCDN redirects but does not document its
# name; ours is named for what it says, so CDN or client rules can act on it.
ALICDN_HEADER = "x-backorigin-redirect-type"


class UnsafeKey(ValueError):
    """A key that cannot be appended to MirrorURL without leaving its path."""


@dataclass(frozen=True)
class OriginRequest:
    url: str
    headers: tuple[tuple[str, str], ...]
    key: str = ""  # the key as the origin sees it (origin_key)
    hosts: frozenset[str] = frozenset()  # the rule's own origin hosts (MirrorURL's, MirrorURLSlave's), lowercase
    follow_redirects: bool = True
    fallback_url: str | None = None  # MirrorURLSlave + key
    probe_url: str | None = None
    switch_all_errors: bool = False
    transparent_codes: frozenset[int] = frozenset()
    auth: OriginCredentials | None = None
    loop: str = ""  # the client request's loop marker, passed on (miss.loop)
    tenant: tuple[str, bool] = ("", False)  # (bucket, signed): whose miss it is (miss.guard shares per tenant)


def origin_url(mirror_url: str, key: str, query: str = "") -> str:
    """MirrorURL + key, the key's own bytes percent-encoded as a path (bytes that are not UTF-8
    too: the key holds them surrogate-escaped), never normalised."""
    segments = key.split("/")
    if any(s in (".", "..") for s in segments):
        raise UnsafeKey(f"key {key!r} has '.' or '..' segments that would leave {mirror_url}")
    url = mirror_url + quote(key, safe="/-._~", errors="surrogateescape")
    base = urlsplit(mirror_url)
    if urlsplit(url).netloc != base.netloc:  # defence in depth: the key never picks the host
        raise UnsafeKey(f"key {key!r} would change the origin host")
    return f"{url}?{query}" if query else url


def origin_key(rule: RoutingRule, key: str) -> str:
    """The key as the origin sees it: rewritten by the rule, slashes collapsed unless
    MirrorPassOriginalSlashes (so 'a//b' and '/a' do not reach the origin as such)."""
    rewritten = rule.rewritten_key(key)
    if rule.Redirect.MirrorPassOriginalSlashes:
        return rewritten
    return re.sub("/{2,}", "/", rewritten).lstrip("/")


def passable_query(request: http.Request) -> str:
    """The client's query string minus what belongs to its exchange with the store (signatures)."""
    kept = [(name, value) for name, value in request.query.items(multi=True) if not is_store_parameter(name)]

    def encoded(text: str) -> str:  # surrogateescape: %FF-style bytes that are not UTF-8 pass unchanged
        return quote(text, safe="", errors="surrogateescape")

    return "&".join(f"{encoded(name)}={encoded(value)}" if value else encoded(name) for name, value in kept)


def origin_headers(rule: RoutingRule, client_headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Headers for the origin under the rule's MirrorHeaders: none of the client's by default."""
    policy = rule.Redirect.MirrorHeaders
    chosen: dict[str, str] = {}
    for name, value in client_headers:
        lowered = name.lower()
        if is_protected_header(lowered) or lowered in policy.Remove:
            continue
        if policy.PassAll or lowered in policy.Pass:
            chosen[lowered] = value
    for header in policy.Set:
        chosen[header.Key] = header.Value
    if rule.Redirect.MirrorHost:
        chosen["host"] = rule.Redirect.MirrorHost
    return tuple(sorted(chosen.items()))


def build_request(rule: RoutingRule, key: str, request: http.Request) -> OriginRequest:
    """What a Mirror rule asks the origin for the key; UnsafeKey for a key it cannot ask for."""
    action = rule.Redirect
    assert action.MirrorURL is not None  # validated: Mirror rules have one
    query = passable_query(request) if action.passes_query else ""
    path = origin_key(rule, key)
    return OriginRequest(
        url=origin_url(action.MirrorURL, path, query),
        headers=origin_headers(rule, request.headers.items(multi=True)),
        key=path,
        hosts=frozenset((urlsplit(url).hostname or "").lower() for url in (action.MirrorURL, action.MirrorURLSlave) if url),
        follow_redirects=action.MirrorFollowRedirect,
        fallback_url=origin_url(action.MirrorURLSlave, path, query) if action.MirrorURLSlave else None,
        probe_url=action.MirrorURLProbe,
        switch_all_errors=action.MirrorSwitchAllErrors,
        transparent_codes=frozenset(action.TransparentMirrorResponseCodes),
        auth=action.MirrorAuth,
        loop=", ".join(request.headers.get_all(LOOP_HEADER)),
    )


class NotAnS3Origin(ValueError):
    """A Mirror rule whose origin cannot be read as an S3 bucket; the message says why."""


@dataclass(frozen=True)
class OriginBucket:
    """Where a Mirror rule's objects are, as an S3 bucket: MirrorURL = endpoint/bucket/base
    (path-style), or, with ${bucket} as the first label of MirrorURL's host, the bucket in the host
    (virtual-hosted style: https://${bucket}.HOST/base, `endpoint` keeping ${bucket} there, which
    s3.clients.foreign_s3_client fills in with the bucket a request names). A bucket key K is the
    origin's key base + K."""

    endpoint: str
    bucket: str
    base: str

    @classmethod
    def of(cls, rule: RoutingRule) -> OriginBucket:
        """NotAnS3Origin for a rule whose keys cannot be mapped to an S3 bucket's and back."""
        action = rule.Redirect
        where = f"RuleNumber {rule.RuleNumber}"
        if not action.is_mirror or action.MirrorURL is None:
            raise NotAnS3Origin(f"{where} is not a Mirror rule")
        if action.ReplaceKeyWith is not None or action.EnableReplacePrefix:
            raise NotAnS3Origin(f"{where} rewrites keys (ReplaceKeyWith / ReplaceKeyPrefixWith): the origin's keys "
                                "cannot be mapped back to the bucket's")
        if action.MirrorHost:
            raise NotAnS3Origin(f"{where} sets MirrorHost: its S3 endpoint cannot be told from MirrorURL")
        parts, template = urlsplit(action.MirrorURL), urlsplit(action.mirror_url_template or action.MirrorURL)
        if BUCKET_PLACEHOLDER in template.netloc:
            endpoint = f"{template.scheme}://{template.netloc}"
            base = host_bucket_base(endpoint)
            rest = base.partition("://")[2] if base else ""
            if not rest or not parts.netloc.endswith(f".{rest}"):
                raise NotAnS3Origin(f"{where}: MirrorURL {action.mirror_url_template} is an S3 origin with ${{bucket}} in "
                                    "its host only as the host's first label: http(s)://${bucket}.HOST[:PORT]/[PREFIX/]")
            return cls(endpoint, parts.netloc[:-len(rest) - 1], unquote(parts.path).lstrip("/"))
        bucket, _, base = unquote(parts.path).lstrip("/").partition("/")
        if not bucket:
            raise NotAnS3Origin(f"{where}: MirrorURL {action.MirrorURL} names no bucket (an S3 origin is "
                                "http(s)://HOST[:PORT]/BUCKET/[PREFIX/], or http(s)://${bucket}.HOST[:PORT]/[PREFIX/])")
        return cls(f"{parts.scheme}://{parts.netloc}", bucket, base)


def location(rule: RoutingRule, ref: ObjectRef, request: http.Request, client_scheme: str, client_host: str) -> str:
    """A redirect rule's Location: Protocol://HostName/ + the rewritten key (+ the query with
    PassQueryString). Without HostName the redirect stays on the host the client asked, in the
    same bucket (path-style), so a rule like "404 -> error page" works without naming a host."""
    action = rule.Redirect
    scheme = action.Protocol or client_scheme
    base = f"{scheme}://{action.HostName}/" if action.HostName else f"{scheme}://{client_host}/{quote(ref.bucket, safe='')}/"
    url = base + quote(rule.rewritten_key(ref.key), safe="/-._~", errors="surrogateescape")  # the client's bytes as sent
    query = passable_query(request) if action.PassQueryString else ""
    return f"{url}?{query}" if query else url


def extra_headers(rule: RoutingRule) -> list[tuple[str, str]]:
    return [(ALICDN_HEADER, "AliCDN")] if rule.Redirect.RedirectType == "AliCDN" else []
