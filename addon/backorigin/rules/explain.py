"""`backorigin.explain URL`: which rule would act on a URL and what it would build, without
fetching anything. Pure: rules and a URL in, text out."""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import http

from backorigin.miss.origin import UnsafeKey, build_request
from backorigin.rules import targets as redirect
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.s3 import addressing as s3


def explain(rulebook: RuleBook, url: str, vhost_domains: tuple[str, ...] = ()) -> str:
    request = http.Request.make("GET", url)
    ref = s3.object_ref(request, vhost_domains)
    if ref is None:
        return f"{url}: names no object (path-style /bucket/key{', or a virtual host' if vhost_domains else ''})"
    if not rulebook.rules_for(ref.bucket):
        return f"bucket {ref.bucket!r} has no rules: the store answers everything"
    lines = [f"bucket {ref.bucket!r}, key {ref.key!r}:"]
    before = rulebook.decide_before_store(ref.bucket, ref.key, "GET", request.headers.get)
    if before is not None:
        lines.append(f"  any GET: {_describe(before, ref, request)} (decided before the store is asked)")
        return "\n".join(lines)
    for status, label in ((404, "missing object (404 NoSuchKey)"), (200, "existing object (200)")):
        rule = rulebook.decide_after_store(ref.bucket, ref.key, "GET", request.headers.get, status)
        lines.append(f"  {label}: {_describe(rule, ref, request) if rule else 'no rule matches; the store answers'}")
    return "\n".join(lines)


def _describe(rule: RoutingRule, ref: s3.ObjectRef, request: http.Request) -> str:
    action = rule.Redirect
    if not action.is_mirror:
        parts = urlsplit(request.url)
        target = redirect.location(rule, ref, request, parts.scheme, parts.netloc)
        return f"RuleNumber {rule.RuleNumber} {action.RedirectType}: {action.HttpRedirectCode} to {target}"
    try:
        origin = build_request(rule, ref.key, request)
    except UnsafeKey as e:
        return f"RuleNumber {rule.RuleNumber} Mirror: not mirrored, {e}"
    also = f", secondary {origin.fallback_url}" if origin.fallback_url else ""
    stored = "never stored (MirrorProxyPass)" if action.MirrorProxyPass else f"stored as s3://{ref.bucket}/{ref.key}"
    return f"RuleNumber {rule.RuleNumber} Mirror: GET {origin.url}{also}; {stored}"
