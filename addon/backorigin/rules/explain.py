"""`backorigin explain URL` and `backorigin.explain URL`: which rule would act on a URL and what
it would build, without fetching anything. Pure: rules and a URL in, text out."""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import http

from backorigin.rules.model import RuleBook
from backorigin.rules.plan import Act, GetPlan, plan_get
from backorigin.rules.targets import location
from backorigin.rules.writethrough import origin_copy
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.reading import Names, SentRequest, SetAside, as_recorded, dns_name, read


def explain(rulebook: RuleBook, url: str, vhost_domains: tuple[str, ...] = ()) -> str:
    request = http.Request.make("GET", url)
    sent = SentRequest(request.scheme, request.host, request.port, (request.host_header or request.pretty_host,), request.path)
    domains = tuple(dns_name(domain) for domain in vhost_domains)
    reading = read(sent, as_recorded(sent, Names((), frozenset(domains), domains)))  # the URL names the store
    if isinstance(reading, SetAside):
        return f"{url}: the proxy forwards it untouched ({reading.reason}: {reading.hint})"
    ref = reading.ref
    if ref is None:
        return f"{url}: names no object (path-style /bucket/key{', or a virtual host' if vhost_domains else ''})"
    entry = rulebook.entry_for(ref.bucket)
    if entry is None or not rulebook.rules_for(ref.bucket):
        return f"bucket {ref.bucket!r} has no rules: the store answers everything"
    applied = "its own entry" if entry == ref.bucket else f"the entry {entry!r}"
    lines = [f"bucket {ref.bucket!r} ({applied}), key {ref.key!r}:"]
    before = plan_get(rulebook, ref, request, None)
    if before.act is Act.REDIRECT:
        lines.append(f"  any GET: {_describe(before, ref, request)} (decided before the store is asked)")
    else:
        for status, label in ((404, "missing object (404 NoSuchKey)"), (200, "existing object (200)")):
            lines.append(f"  {label}: {_describe(plan_get(rulebook, ref, request, status), ref, request)}")
    if rulebook.writes_through(ref.bucket):
        copy = origin_copy(rulebook, ref)
        lines.append("  writes (PUT, copy, multipart upload, DELETE): " + (
            f"applied to the origin too, s3://{copy.bucket}/{copy.key} at {copy.server} (WriteThrough; signed with "
            f"MirrorAuth {copy.access_key_id})" if copy else "not written through: no Mirror rule covers the key"))
    return "\n".join(lines)


def _describe(plan: GetPlan, ref: ObjectRef, request: http.Request) -> str:
    rule = plan.rule
    if rule is None:
        return "no rule matches; the store answers"
    action = rule.Redirect
    if plan.act is Act.REDIRECT:
        parts = urlsplit(request.url)
        target = location(rule, ref, request, parts.scheme, parts.netloc)
        return f"RuleNumber {rule.RuleNumber} {action.RedirectType}: {action.HttpRedirectCode} to {target}"
    if plan.origin is None:
        return f"RuleNumber {rule.RuleNumber} Mirror: not mirrored, {plan.detail}"
    also = f", secondary {plan.origin.fallback_url}" if plan.origin.fallback_url else ""
    stored = "never stored (MirrorProxyPass)" if action.MirrorProxyPass else f"stored as s3://{ref.bucket}/{ref.key}"
    return f"RuleNumber {rule.RuleNumber} Mirror: GET {plan.origin.url}{also}; {stored}"
