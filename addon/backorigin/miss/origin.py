"""The origin fetch: `OriginClient.fetch` asks the origin what a Mirror rule says
(rules.targets.OriginRequest), follows redirects, falls back to MirrorURLSlave, signs with
MirrorAuth, checks the body as it arrives and hands it to a sink; it always returns an
OriginResult value, never raises for origin faults.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from backorigin.limits import WHOLE_ANSWER_LIMIT
from backorigin.miss.integrity import BodyCheck, decimal
from backorigin.options import parse_size
from backorigin.rules.model import LOOP_HEADER, OriginCredentials
from backorigin.rules.targets import OriginRequest

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PROBE_TTL = 5.0  # seconds a MirrorURLProbe verdict is trusted

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
_USER_META = re.compile(r"^x-(?:amz|oss)-meta-(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class OriginResult:
    """What the origin said about `url` (the URL asked, before any redirect).
    `status` is None when no usable answer arrived; `failure` then says why.
    `not_storable` says why a body the client may see must not be stored."""

    url: str
    status: int | None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    failure: str = ""
    location: str = ""
    not_storable: str = ""
    final_url: str = ""  # where the body came from, after redirects
    size: int = 0
    md5: str = ""  # base64 MD5 of the body, computed as it arrived
    etag: str = ""  # the ETag the store will give the body (integrity.StoreETag)

    @property
    def ok(self) -> bool:
        return self.status == 200

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def storable_headers(self) -> dict[str, str]:
        found = {name.lower(): value for name, value in self.headers}
        return {name: found[name] for name in STORABLE_HEADERS if name in found}

    @property
    def user_metadata(self) -> dict[str, str]:
        """The origin's own x-amz-meta-* / x-oss-meta-* headers, prefix stripped."""
        return {m.group(1).lower(): v for k, v in self.headers if (m := _USER_META.match(k))}


def should_switch(result: OriginResult, all_errors: bool) -> bool:
    """MirrorSwitchAllErrors false: only network faults, timeouts and 5xx send a fetch to
    MirrorURLSlave; true: anything but 200/206/3xx/404."""
    if result.status is None:
        return True
    if all_errors:
        return result.status not in (200, 206, 404) and not 300 <= result.status < 400
    return result.status >= 500


def _credentials(auth: OriginCredentials) -> Credentials:
    return Credentials(auth.AccessKeyId, auth.AccessKeySecret.get_secret_value())


def sigv4_headers(method: str, url: str, headers: dict[str, str], auth: OriginCredentials) -> dict[str, str]:
    """Headers signed with AWS SigV4 (botocore's signer), for a private S3 bucket as origin."""
    signed = AWSRequest(method=method, url=url, headers=headers)
    S3SigV4Auth(_credentials(auth), "s3", auth.Region).add_auth(signed)
    return dict(signed.headers.items())


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 10.0  # between two reads of the answer: a stalled origin
    total: float = 10.0  # a whole fetch of a body answered whole (up to `whole_limit`), redirects included
    copy: float = 3600.0  # a whole fetch of a larger body, which its clients get as it arrives
    whole_limit: int = parse_size("backorigin_max_inline", WHOLE_ANSWER_LIMIT)  # see backorigin.limits

    def per_operation(self) -> httpx.Timeout:
        return httpx.Timeout(self.read, connect=self.connect)


class BodySink(Protocol):
    """Where a 200 body goes as it arrives (see fill.Fill): `begin` once the final answer's
    headers are in, then `write` for every raw chunk."""


    def begin(self, status: int, headers: tuple[tuple[str, str], ...], url: str) -> None:
        """`url` is the one asked (MirrorURL or MirrorURLSlave + key), before any redirect."""

    def write(self, chunk: bytes) -> None: ...

    @property
    def started(self) -> bool:
        """Whether any byte reached the sink (then a fallback origin can no longer take over)."""
        ...


class OriginClient:
    """One pooled async HTTP client for all origins; follows redirects itself.

    A 200 body is handed to a `BodySink` chunk by chunk, never held here; a transparent code's
    answer is answered whole, so it is kept up to the whole-answer limit. A body up to that limit
    must arrive within the total timeout, a larger one within the copy timeout. `transport`:
    httpx's hook under the client (the sweep paces its requests there)."""

    def __init__(self, timeouts: Timeouts | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeouts = timeouts or Timeouts()
        self._probes: dict[str, tuple[float, bool]] = {}
        # trust_env=False: proxy variables meant for the client must not reroute origin fetches.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, request: OriginRequest, sink: BodySink) -> OriginResult:
        """Primary origin, or MirrorURLSlave when the probe fails or the primary's answer
        is one that switches (see should_switch) before any of its body was passed on."""
        if request.fallback_url and request.probe_url and not await self._healthy(request.probe_url):
            logger.info("probe %s failed; asking %s", request.probe_url, request.fallback_url)
            return await self._fetch_url(request, request.fallback_url, sink)
        result = await self._fetch_url(request, request.url, sink)
        if request.fallback_url and not sink.started and should_switch(result, request.switch_all_errors):
            logger.info("%s answered %s; asking %s", request.url, result.status or result.failure, request.fallback_url)
            return await self._fetch_url(request, request.fallback_url, sink)
        return result

    async def _healthy(self, probe_url: str) -> bool:
        checked_at, healthy = self._probes.get(probe_url, (0.0, False))
        if time.monotonic() - checked_at > PROBE_TTL:
            try:
                async with asyncio.timeout(self.timeouts.total):
                    answer = await self._client.get(probe_url, headers={LOOP_HEADER: "probe"}, timeout=self.timeouts.per_operation())
                    healthy = answer.status_code == 200
            except (TimeoutError, httpx.HTTPError):
                healthy = False
            self._probes[probe_url] = (time.monotonic(), healthy)
        return healthy

    async def _fetch_url(self, request: OriginRequest, url: str, sink: BodySink) -> OriginResult:
        limit = self.timeouts.total
        try:
            async with asyncio.timeout(limit) as deadline:
                return await self._follow(request, url, sink, deadline)
        except TimeoutError:
            return OriginResult(url, None, failure=f"no complete answer within {limit:g}s")
        except httpx.HTTPError as e:
            return OriginResult(url, None, failure=f"{type(e).__name__}: {e}")

    async def _follow(self, request: OriginRequest, first_url: str, sink: BodySink, deadline: asyncio.Timeout) -> OriginResult:
        url = first_url
        headers = {**dict(request.headers), LOOP_HEADER: "1"}
        auth = request.auth
        for _ in range(MAX_REDIRECTS + 1):
            sent = sigv4_headers("GET", url, headers, auth) if auth else headers
            async with self._client.stream("GET", url, headers=sent, timeout=self.timeouts.per_operation()) as response:
                location = response.headers.get("location", "")
                if response.status_code in REDIRECT_STATUSES and location:
                    if not request.follow_redirects:
                        return OriginResult(first_url, response.status_code, location=location)
                    next_url = urljoin(url, location)
                    if urlsplit(next_url).scheme not in ("http", "https"):
                        return OriginResult(first_url, None, failure=f"redirect to non-HTTP {next_url!r}")
                    if urlsplit(next_url).netloc != urlsplit(url).netloc:
                        # a Host or credentials meant for one origin never follow to another
                        headers.pop("host", None)
                        auth = None
                    url = next_url
                    continue
                return await self._read(request, first_url, url, response, sink, deadline)
        return OriginResult(first_url, None, failure=f"more than {MAX_REDIRECTS} redirects")

    async def _read(
        self, request: OriginRequest, url: str, final_url: str, response: httpx.Response, sink: BodySink,
        deadline: asyncio.Timeout,
    ) -> OriginResult:
        """Read a final answer, checking the raw body as it arrives (integrity.BodyCheck): a
        200 goes to the sink; a transparent code's body is kept; other answers are not read."""
        headers = tuple(response.headers.multi_items())
        status = response.status_code
        found = partial(OriginResult, url, status, headers, final_url=final_url)
        if status != 200 and status not in request.transparent_codes:
            return found()
        check = BodyCheck.for_headers(response.headers)
        long_body = False
        if status == 200:
            sink.begin(status, headers, url)
        kept: list[bytes] = []
        async for chunk in response.aiter_raw():
            check.update(chunk)
            if not long_body and max(check.size, decimal(check.content_length) or 0) > self.timeouts.whole_limit:
                long_body = True  # a large body gets the copy timeout, counted from here
                deadline.reschedule(asyncio.get_running_loop().time() + self.timeouts.copy)
            if status == 200:
                sink.write(chunk)
            elif check.size <= self.timeouts.whole_limit:
                kept.append(chunk)
            else:
                return OriginResult(url, None, failure=f"a {status} answer over {self.timeouts.whole_limit} bytes")
        failure = check.failure()
        if failure:
            return OriginResult(url, None, failure=failure)
        not_storable = f"the origin answered {status}" if status != 200 else check.mismatch()
        return found(body=b"".join(kept), not_storable=not_storable, size=check.size, md5=check.md5_base64,
                     etag=check.digests.value())
