"""The origin side: which URL and headers a mirror sends, and the async fetch itself.

`build_request` is pure (rule + client request -> OriginRequest); `OriginClient.fetch`
does the I/O and always returns an OriginResult value, never raises for origin faults.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import httpx
from mitmproxy import http

from addon.rules import RoutingRule, is_protected_header

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Origin headers that describe the object; they go to the client and into the store.
STORABLE_HEADERS = (
    "content-type",
    "content-encoding",
    "content-disposition",
    "cache-control",
    "expires",
    "content-language",
    "access-control-allow-origin",
)

# Query parameters that carry a request signature for the store; an origin never gets them.
SIGNATURE_PARAMS = frozenset(
    {"signature", "ossaccesskeyid", "awsaccesskeyid", "expires", "security-token"}
)


class UnsafeKey(ValueError):
    """A key that cannot be appended to MirrorURL without leaving its path."""


@dataclass(frozen=True)
class OriginRequest:
    url: str
    headers: tuple[tuple[str, str], ...]
    follow_redirects: bool

    @property
    def flight_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.url, self.headers


@dataclass(frozen=True)
class OriginResult:
    """What the origin said about `url` (the URL asked, before any redirect).
    `status` is None when no usable answer arrived; `failure` then says why."""

    url: str
    status: int | None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    chunked: bool = False
    failure: str = ""
    hops: int = 0
    location: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def storable_headers(self) -> dict[str, str]:
        found = {name.lower(): value for name, value in self.headers}
        return {name: found[name] for name in STORABLE_HEADERS if name in found}


def origin_url(mirror_url: str, key: str, query: str = "") -> str:
    """MirrorURL + key, the key percent-encoded as a path and never normalised."""
    segments = key.split("/")
    if any(s in (".", "..") for s in segments):
        raise UnsafeKey(f"key {key!r} has '.' or '..' segments that would leave {mirror_url}")
    url = mirror_url + quote(key, safe="/-._~")
    base = urlsplit(mirror_url)
    if urlsplit(url).netloc != base.netloc:  # defence in depth: the key never picks the host
        raise UnsafeKey(f"key {key!r} would change the origin host")
    return f"{url}?{query}" if query else url


def passable_query(request: http.Request) -> str:
    """The client's query string minus anything that signs a request to the store."""
    kept = [
        (name, value)
        for name, value in request.query.items(multi=True)
        if name.lower() not in SIGNATURE_PARAMS and not name.lower().startswith("x-amz-")
    ]
    return "&".join(
        f"{quote(name, safe='')}={quote(value, safe='')}" if value else quote(name, safe="")
        for name, value in kept
    )


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
    return tuple(sorted(chosen.items()))


def build_request(rule: RoutingRule, key: str, request: http.Request) -> OriginRequest:
    redirect = rule.Redirect
    query = passable_query(request) if redirect.MirrorPassQueryString else ""
    return OriginRequest(
        url=origin_url(redirect.MirrorURL, key, query),
        headers=origin_headers(rule, request.headers.items(multi=True)),
        follow_redirects=redirect.MirrorFollowRedirect,
    )


class OriginClient:
    """One pooled async HTTP client for all origins; follows redirects itself."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # trust_env=False: proxy variables meant for the client must not reroute origin fetches.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, request: OriginRequest) -> OriginResult:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(request)
        except TimeoutError:
            return OriginResult(request.url, None, failure=f"no complete answer within {self.timeout:g}s")
        except httpx.HTTPError as e:
            return OriginResult(request.url, None, failure=f"{type(e).__name__}: {e}")

    async def _fetch(self, request: OriginRequest) -> OriginResult:
        url = request.url
        headers = dict(request.headers)
        for hop in range(MAX_REDIRECTS + 1):
            async with self._client.stream("GET", url, headers=headers, timeout=self.timeout) as response:
                location = response.headers.get("location", "")
                if response.status_code in REDIRECT_STATUSES and location:
                    if not request.follow_redirects:
                        return OriginResult(request.url, response.status_code, location=location, hops=hop)
                    next_url = urljoin(url, location)
                    if urlsplit(next_url).scheme not in ("http", "https"):
                        return OriginResult(request.url, None, failure=f"redirect to non-HTTP {next_url!r}", hops=hop)
                    if urlsplit(next_url).netloc != urlsplit(url).netloc:
                        headers.pop("host", None)  # a Host meant for one origin must not follow to another
                    url = next_url
                    continue
                return await self._read(request.url, response, hop)
        return OriginResult(request.url, None, failure=f"more than {MAX_REDIRECTS} redirects", hops=MAX_REDIRECTS + 1)

    @staticmethod
    async def _read(url: str, response: httpx.Response, hops: int) -> OriginResult:
        """Read a final answer; only a 200's body is kept, raw (still content-encoded)."""
        headers = tuple(response.headers.multi_items())
        if response.status_code != 200:
            return OriginResult(url, response.status_code, headers, hops=hops)
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        declared = response.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) != len(body)):
            return OriginResult(
                url, None, failure=f"body of {len(body)} bytes, Content-Length said {declared}", hops=hops
            )
        chunked = "chunked" in response.headers.get("transfer-encoding", "").lower()
        return OriginResult(url, 200, headers, body, chunked=chunked, hops=hops)
