"""Redirect back-to-origin (RedirectType External / AliCDN): the Location a rule builds."""

from __future__ import annotations

from urllib.parse import quote

from mitmproxy import http

from backorigin.miss.origin import passable_query
from backorigin.rules.model import RoutingRule
from backorigin.s3.addressing import ObjectRef

# OSS adds a header for Alibaba Cloud CDN to AliCDN redirects but does not document its
# name; ours is named for what it says, so CDN or client rules can act on it.
ALICDN_HEADER = "x-backorigin-redirect-type"


def location(rule: RoutingRule, ref: ObjectRef, request: http.Request, client_scheme: str, client_host: str) -> str:
    """Protocol://HostName/ + the rewritten key (+ the query with PassQueryString).

    Without HostName the redirect stays on the host the client asked, in the same bucket
    (path-style), so a rule like "404 -> error page" works without naming a host."""
    action = rule.Redirect
    scheme = action.Protocol or client_scheme
    base = f"{scheme}://{action.HostName}/" if action.HostName else f"{scheme}://{client_host}/{quote(ref.bucket, safe='')}/"
    url = base + quote(rule.rewritten_key(ref.key), safe="/-._~")
    query = passable_query(request) if action.PassQueryString else ""
    return f"{url}?{query}" if query else url


def extra_headers(rule: RoutingRule) -> list[tuple[str, str]]:
    return [(ALICDN_HEADER, "AliCDN")] if rule.Redirect.RedirectType == "AliCDN" else []
