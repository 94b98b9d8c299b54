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
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Protocol
from urllib.parse import SplitResult, urljoin, urlsplit

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from backorigin import httpclient
from backorigin.limits import MAX_OBJECT_SIZE, PART_SIZE, WHOLE_ANSWER_LIMIT
from backorigin.miss.addresses import RedirectRefused, checked_address
from backorigin.miss.folders import folder_redirect
from backorigin.miss.integrity import BodyCheck, decimal, multipart_parts, part_layout
from backorigin.miss.loop import LOOP_HEADER, LoopMarker
from backorigin.options import parse_size, seconds, size
from backorigin.rules.model import OriginCredentials
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


class Failure(StrEnum):
    """Why no usable answer came from the origin: the kind counted in the metrics, and the
    short reason a client reads in its 424 (the details go to the log and the flow's decision)."""

    TIMEOUT = "timeout"
    NETWORK = "network"
    INTEGRITY = "integrity"
    REDIRECT = "redirect"
    TOO_LARGE = "too-large"
    SPOOL = "spool"
    CIRCUIT_OPEN = "circuit-open"  # miss.guard: the origin kept failing, it is left alone for a while
    BUSY = "busy"  # miss.guard: its fetches and queue were all taken (503 SlowDown, not 424)

    @property
    def reason(self) -> str:
        return _WORDS[self][0]

    @property
    def label(self) -> str:
        """A few words for the flow list (`424 origin unreachable`)."""
        return _WORDS[self][1]


# what a client reads in its 424, and the few words of the flow list's comment
_WORDS = {
    Failure.TIMEOUT: ("the origin did not answer in time", "origin timed out"),
    Failure.NETWORK: ("the origin could not be reached", "origin unreachable"),
    Failure.INTEGRITY: ("the origin's answer was incomplete or did not match its headers", "origin answer incomplete"),
    Failure.REDIRECT: ("the origin redirected where the proxy does not follow", "origin redirect refused"),
    Failure.TOO_LARGE: ("the object is larger than this proxy mirrors", "object too large"),
    Failure.SPOOL: ("the proxy could not keep the object on its disk", "spool failed"),
    Failure.CIRCUIT_OPEN: ("the origin kept failing; the proxy is not asking it for a while", "origin circuit open"),
    Failure.BUSY: ("the origin is busy with other fetches", "origin busy"),
}


@dataclass(frozen=True)
class OriginResult:
    """What the origin said about `url` (the URL asked, before any redirect).
    `status` is None when no usable answer arrived; `failure` (the kind) and `detail` say why.
    `not_storable` says why a body the client may see must not be stored."""

    url: str
    status: int | None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    failure: Failure | None = None
    detail: str = ""
    location: str = ""
    not_storable: str = ""
    final_url: str = ""  # where the body came from, after redirects
    size: int = 0
    md5: str = ""  # base64 MD5 of the body, computed as it arrived
    etag: str = ""  # the ETag the store will give the body (integrity.StoreETag), uploaded in parts of:
    part_size: int = PART_SIZE

    @classmethod
    def failed(cls, url: str, failure: Failure, detail: str) -> OriginResult:
        return cls(url, None, failure=failure, detail=detail)

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

    @property
    def why(self) -> str:
        """Why there is no object to give, for the log and the flow's decision."""
        return self.detail or f"the origin answered {self.status}"


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


def _signed(method: str, url: str, headers: dict[str, str], auth: OriginCredentials | None) -> dict[str, str]:
    return sigv4_headers(method, url, headers, auth) if auth else headers


def sigv4_headers(method: str, url: str, headers: dict[str, str], auth: OriginCredentials) -> dict[str, str]:
    """Headers signed with AWS SigV4 (botocore's signer), for a private S3 bucket as origin."""
    signed = AWSRequest(method=method, url=url, headers=headers)
    S3SigV4Auth(_credentials(auth), "s3", auth.Region).add_auth(signed)
    return dict(signed.headers.items())


@dataclass(frozen=True)
class Timeouts:
    """The origin fetch's limits in time, and the size past which an answer streams (miss.mirroring
    declares and reads their options)."""

    connect: float = seconds("backorigin_origin_connect_timeout", 5.0, "Seconds to connect to an origin.")
    read: float = seconds(  # between two reads of the answer: a stalled origin
        "backorigin_origin_read_timeout", 10.0, "Seconds an origin may stay silent mid-answer.")
    total: float = seconds(  # a whole fetch of a body answered whole (up to `whole_limit`), redirects included
        "backorigin_origin_timeout", 10.0,
        "Seconds an origin fetch may take in all, redirects included (text, e.g. \"0.5\").")
    copy: float = seconds(  # a whole fetch of a larger body, which its clients get as it arrives
        "backorigin_copy_timeout", 3600.0, "Seconds the fetch of a body over backorigin_max_inline may take.")
    whole_limit: int = size(  # see backorigin.limits
        "backorigin_max_inline", WHOLE_ANSWER_LIMIT,
        "Largest miss answered only once its whole body has arrived and been checked (with its ETag; a broken "
        "origin gets 424). Larger GETs are streamed as the body arrives (no ETag in that first answer; a broken "
        "origin resets the connection). A GET whose ETag is known before its body (the origin's MD5 or S3 "
        "multipart ETag, or its Content-MD5) streams from its first byte above 1 MiB, with that ETag, whatever "
        "this says. Memory stays bounded either way: bodies go through the spool.")

    def per_operation(self) -> aiohttp.ClientTimeout:
        """Each request's own: `connect` to open a connection, `read` between two reads."""
        return httpclient.timeout(self.connect, self.read)


class BodySink(Protocol):
    """Where a 200 body goes as it arrives (see fill.Fill): `begin` once the final answer's
    headers are in, then `write` for every raw chunk."""

    def begin(self, status: int, headers: tuple[tuple[str, str], ...], url: str, etag: str | None) -> None:
        """`url` is the one asked (MirrorURL or MirrorURLSlave + key), before any redirect; `etag` the
        one the stored object will have, when it is known before the body (the origin's)."""

    def write(self, chunk: bytes) -> None: ...

    @property
    def started(self) -> bool:
        """Whether any byte reached the sink (then a fallback origin can no longer take over)."""
        ...


class Pacing(Protocol):
    """Paces what the client asks of origins (the backfill's --max-rps and --max-bandwidth)."""

    async def request(self) -> None:
        """Before every request sent to an origin: redirects, the secondary origin, probes and HEADs included."""

    async def body(self, size: int) -> None:
        """After every chunk of an answer's body read."""


class SinkFailed(Exception):
    """The sink could not keep the body (a full disk): the fetch ends, nothing is stored."""


class Answer:
    """An origin's answer as the fetch reads it: status; headers decoded as httpx did (`fields`, in
    order, names in lowercase; `headers`, by name, a repeated one's values joined); the raw body."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status = response.status
        self.fields = tuple((name.lower(), value) for name, value in httpclient.decoded_headers(response.raw_headers))
        self.headers = httpclient.joined(self.fields)
        self._response = response

    def body(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive, raw (not decompressed)."""
        return self._response.content.iter_any()


# told of every URL's result, with the request it was asked for (miss.guard's OriginGuard.observe)
Observer = Callable[[OriginRequest, str, OriginResult], None]


class OriginClient:
    """One connection pool (httpclient) for all origins; follows redirects itself, and only where the
    rule points: to the rule's own hosts (MirrorURL's and MirrorURLSlave's, on any scheme or port),
    to `allowed_hosts`, or to a host whose every address is public, which is then connected to at
    the address that was checked. The rule's headers and MirrorAuth go only to its own hosts, and
    never over a downgrade to http. Nothing is kept from one fetch to another (no cookies).

    A 200 body is handed to a `BodySink` chunk by chunk, never held here, up to `max_size` bytes;
    a transparent code's answer is answered whole, so it is kept up to the whole-answer limit. A
    body up to that limit must arrive within the total timeout, a larger one within the copy
    timeout. `verify`: TLS verification (certifi's CA store, or a CA file); `pacing`: see Pacing."""

    def __init__(self, timeouts: Timeouts | None = None, pacing: Pacing | None = None, verify: bool | str = True,
                 observe: Observer = lambda request, url, result: None,
                 own_listeners: Callable[[], Iterable[tuple[str, int]]] = lambda: ()) -> None:
        """`observe(request, url, result)`: told of every URL's result, with the request it was asked
        for (miss.guard's circuits); `own_listeners()`: (host, port) of every socket the proxy
        listens on, never fetched from."""
        self.timeouts = timeouts or Timeouts()
        self.max_size = parse_size("backorigin_max_object_size", MAX_OBJECT_SIZE)
        self.allowed_hosts: frozenset[str] = frozenset()
        self.verify = verify
        self._pacing = pacing
        self._probes: dict[str, tuple[float, bool]] = {}
        self.marker = LoopMarker()  # on every request it sends: the proxy knows its own fetches coming back
        self.own_listeners = own_listeners
        self.observe = observe
        self._session = httpclient.Session()  # no cookie jar, no proxy variables of this machine

    async def aclose(self) -> None:
        await self._session.aclose()

    async def fetch(self, request: OriginRequest, sink: BodySink) -> OriginResult:
        """Primary origin, or MirrorURLSlave when the probe fails or the primary's answer
        is one that switches (see should_switch) before any of its body was passed on."""
        if request.fallback_url and request.probe_url and not await self._healthy(request.probe_url):
            logger.info("probe %s failed; asking %s", request.probe_url, request.fallback_url)
            return await self._observed(request, request.fallback_url, sink)
        return await self._with_fallback(request, sink)

    async def head(self, request: OriginRequest) -> OriginResult:
        """A HEAD where `fetch` would GET (the same headers, signature, redirects and fallback);
        its answer's status and headers, no body (`backorigin verify`)."""
        return await self._with_fallback(request, None)

    async def _with_fallback(self, request: OriginRequest, sink: BodySink | None) -> OriginResult:
        result = await self._observed(request, request.url, sink)
        if request.fallback_url and not (sink and sink.started) and should_switch(result, request.switch_all_errors):
            logger.info("%s answered %s; asking %s", request.url, result.status or result.detail, request.fallback_url)
            return await self._observed(request, request.fallback_url, sink)
        return result

    async def _observed(self, request: OriginRequest, url: str, sink: BodySink | None) -> OriginResult:
        """`sink` None: a HEAD."""
        result = await self._fetch_url(request, url, sink)
        self.observe(request, url, result)
        return result

    async def _healthy(self, probe_url: str) -> bool:
        checked_at, healthy = self._probes.get(probe_url, (0.0, False))
        if time.monotonic() - checked_at > PROBE_TTL:
            try:
                async with asyncio.timeout(self.timeouts.total), self._send("GET", probe_url, {LOOP_HEADER: self.marker.value()}) as answer:
                    healthy = answer.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                healthy = False
            self._probes[probe_url] = (time.monotonic(), healthy)
        return healthy

    async def _fetch_url(self, request: OriginRequest, url: str, sink: BodySink | None) -> OriginResult:
        limit = self.timeouts.total
        try:
            async with asyncio.timeout(limit) as deadline:
                return await self._follow(request, url, sink, deadline)
        except TimeoutError as e:
            if isinstance(e, aiohttp.ServerTimeoutError):  # a connect or read timeout of one request
                return OriginResult.failed(url, Failure.TIMEOUT, httpclient.describe_error(e))
            return OriginResult.failed(url, Failure.TIMEOUT, f"no complete answer within {limit:g}s")
        except RedirectRefused as e:
            logger.warning("%s: %s", url, e)
            return OriginResult.failed(url, Failure.REDIRECT, str(e))
        except SinkFailed as e:
            return OriginResult.failed(url, Failure.SPOOL, str(e))
        except (aiohttp.ClientError, OSError) as e:
            return OriginResult.failed(url, Failure.NETWORK, httpclient.describe_error(e))

    async def _follow(self, request: OriginRequest, first_url: str, sink: BodySink | None, deadline: asyncio.Timeout) -> OriginResult:
        method = "GET" if sink is not None else "HEAD"
        url = first_url
        first = _scheme_host_port(urlsplit(first_url))
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            # the rule's headers and MirrorAuth only to the origin itself: the same scheme (never over
            # a downgrade), host and port (another port of the host is another server)
            own = host in request.hosts and _scheme_host_port(parts) == first
            marker = {LOOP_HEADER: self.marker.value(request.loop)}
            headers = {**dict(request.headers), **marker} if own else marker
            if own and parts.netloc != urlsplit(first_url).netloc:
                headers.pop("host", None)  # a Host meant for one origin never follows to another
            auth = request.auth if own else None
            pinned = await checked_address(parts, host in request.hosts or host in self.allowed_hosts, self.own_listeners())
            async with self._send(method, url, _signed(method, url, headers, auth), pinned) as response:
                location = response.headers.get("location", "")
                if response.status in REDIRECT_STATUSES and location:
                    if why := folder_redirect(url, response.status, urljoin(url, location)):
                        return OriginResult(first_url, 404, detail=why, final_url=url)  # a folder is no object
                    if not request.follow_redirects:
                        return OriginResult(first_url, response.status, location=location)
                    url = urljoin(url, location)
                    if urlsplit(url).scheme not in ("http", "https"):
                        return OriginResult.failed(first_url, Failure.REDIRECT, f"redirect to non-HTTP {url!r}")
                    continue
                if sink is None:
                    return OriginResult(first_url, response.status, response.fields, final_url=url)
                first_part = None
                if response.status == 200 and own and multipart_parts(response.headers.get("etag")):
                    first_part = await self._first_part(url, headers, auth, pinned)
                return await self._read(request, first_url, url, response, sink, deadline, first_part)
        return OriginResult.failed(first_url, Failure.REDIRECT, f"more than {MAX_REDIRECTS} redirects")

    async def _first_part(self, url: str, headers: dict[str, str], auth: OriginCredentials | None, pinned: str | None) -> int | None:
        """The size of an S3 object's first part (HEAD ?partNumber=1), so a write-back can upload it
        as the origin did and the store gives it the origin's multipart ETag; None when the origin
        does not say (not S3, or it refuses)."""
        asked = f"{url}{'&' if urlsplit(url).query else '?'}partNumber=1"
        try:
            async with self._send("HEAD", asked, _signed("HEAD", asked, headers, auth), pinned) as answer:
                length = decimal(answer.headers.get("content-length"))
                return length if answer.status == 206 or (answer.status == 200 and "x-amz-mp-parts-count" in answer.headers) else None
        except aiohttp.ClientError as e:
            logger.info("cannot learn the parts of %s: %s", url, e)
            return None

    @asynccontextmanager
    async def _send(self, method: str, url: str, headers: dict[str, str], pinned: str | None = None) -> AsyncIterator[Answer]:
        """`method` `url`; at the address `pinned` when given (the one that was checked), with the
        URL's host name as Host and TLS server name (connections are pooled by that name too)."""
        target = httpclient.absolute_url(url)
        server_name = None
        if pinned is not None:
            assert target.raw_host is not None and target.port is not None
            headers = {"host": target.host_port_subcomponent or target.raw_host, **headers}
            server_name = target.raw_host
            target = httpclient.exact_url(target.scheme, pinned, target.port, target.raw_path_qs)
        if self._pacing is not None:
            await self._pacing.request()
        try:
            response = await self._session.get().request(
                method, target, headers=list(headers.items()), allow_redirects=False, timeout=self.timeouts.per_operation(),
                ssl=httpclient.tls(self.verify), server_hostname=server_name)
        except UnicodeError as e:  # a header aiohttp cannot write
            raise httpclient.NotSendable(f"{type(e).__name__}: {e}") from None
        try:
            yield Answer(response)
        finally:
            response.close()  # unless read to its end (then aiohttp has pooled it): the connection is dropped

    async def _read(
        self, request: OriginRequest, url: str, final_url: str, response: Answer, sink: BodySink,
        deadline: asyncio.Timeout, first_part: int | None = None,
    ) -> OriginResult:
        """Read a final answer, checking the raw body as it arrives (integrity.BodyCheck): a
        200 goes to the sink, with the ETag it will have when the origin's can be kept (see
        integrity.part_layout); a transparent code's body is kept; other answers are not read."""
        headers = response.fields
        status = response.status
        found = partial(OriginResult, url, status, headers, final_url=final_url)
        if status != 200 and status not in request.transparent_codes:
            return found()
        declared = decimal(response.headers.get("content-length")) or 0
        if status == 200 and declared > self.max_size:
            return OriginResult.failed(url, Failure.TOO_LARGE, f"Content-Length {declared} is over backorigin_max_object_size")
        part_size, announced = part_layout(response.headers.get("etag"), declared if "content-length" in response.headers else None,
                                           first_part, response.headers.get("content-md5"))
        check = BodyCheck.for_headers(response.headers, part_size)
        if status == 200:
            sink.begin(status, headers, url, announced)
        kept: list[bytes] = []
        long_body = False
        try:
            async for chunk in response.body():
                if self._pacing is not None:
                    await self._pacing.body(len(chunk))
                check.update(chunk)
                if not long_body and max(check.size, declared) > self.timeouts.whole_limit:
                    long_body = True  # a large body gets the copy timeout, counted from here
                    deadline.reschedule(asyncio.get_running_loop().time() + self.timeouts.copy)
                if status != 200 and check.size > self.timeouts.whole_limit:
                    return OriginResult.failed(url, Failure.TOO_LARGE, f"a {status} answer over {self.timeouts.whole_limit} bytes")
                if check.size > self.max_size:
                    return OriginResult.failed(url, Failure.TOO_LARGE, f"a body over backorigin_max_object_size ({self.max_size} bytes)")
                if status == 200:
                    sink.write(chunk)
                else:
                    kept.append(chunk)
        except aiohttp.ServerTimeoutError as e:
            return OriginResult.failed(url, Failure.TIMEOUT, f"the body stalled: {type(e).__name__}: {e}")
        except aiohttp.ClientError as e:  # the answer had begun: it was cut short
            return OriginResult.failed(url, Failure.INTEGRITY, f"the body broke off: {type(e).__name__}: {e}")
        failure = check.failure()
        if failure:
            return OriginResult.failed(url, Failure.INTEGRITY, failure)
        not_storable = f"the origin answered {status}" if status != 200 else check.mismatch()
        return found(body=b"".join(kept), not_storable=not_storable, size=check.size, md5=check.md5_base64,
                     etag=check.digests.value(), part_size=part_size)


def _scheme_host_port(parts: SplitResult) -> tuple[str, str, int | None]:
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)
