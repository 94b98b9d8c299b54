"""The HTTP client of the proxy's own requests: the store check (s3/storeclient.py StoreClient) and the
origin fetch (miss/origin.py OriginClient), on aiohttp (a third of httpx's CPU per request; see
BENCHMARKS.md "Which HTTP client").

What goes on the wire is what the caller wrote: the request target byte for byte (no dot segment
removed, no byte dropped: a target that cannot be sent as it is raises `NotSendable`), the
headers in their order, case and number (`wire_headers` refuses what aiohttp would merge), Host
where the caller put it, and nothing added (no User-Agent, Accept, Accept-Encoding, no cookie). Bodies are read raw (gzip left alone).
Connections are pooled without a cap, by address, TLS settings, proxy and TLS server name.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import certifi
import yarl
from multidict import CIMultiDict

from backorigin.limits import KiB

# aiohttp's bounds on an answer's head, raised from its defaults (8190-byte lines, 128 headers): a
# store may send many headers (S3 metadata). Still bounded against a hostile origin: at most
# MAX_HEADERS lines of MAX_FIELD_SIZE bytes each.
MAX_LINE_SIZE = 16 * KiB  # the status line
MAX_FIELD_SIZE = 16 * KiB  # one header line
MAX_HEADERS = 256
KEEPALIVE = 10.0  # seconds an idle connection is kept
_SKIPPED = ("User-Agent", "Accept", "Accept-Encoding")  # what aiohttp would add of its own
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))  # a request target's bytes
_TARGET_BYTES = frozenset(_PRINTABLE)


class NotSendable(aiohttp.ClientError, ValueError):
    """A request that cannot go on the wire exactly as it was given."""


class ConnectionBroke(aiohttp.ClientConnectionError):
    """The connection broke before the answer's head (reset, or closed by the server)."""


# Whether the connection a request went out on was a kept-alive one from the pool: set by the
# session's trace (run in the request's task), read by `_sent_once` in that same task.
_REUSED: ContextVar[bool] = ContextVar("backorigin_connection_reused", default=False)


async def _note_reused(session: aiohttp.ClientSession, context: Any, params: Any) -> None:
    _REUSED.set(True)


async def _sent_once(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """A client middleware. aiohttp sends a GET or HEAD again whenever its connection breaks
    before the answer, on a new connection as on a kept-alive one: a resetting origin would get
    two requests per fetch (its circuit breaker counts fetches). Here a request is sent again
    only when it went out on a kept-alive connection the server had closed meanwhile (RFC 9112
    section 9.3.1), once; a fresh connection that breaks is a failure."""
    for attempt in (1, 2):
        _REUSED.set(False)
        try:
            return await handler(request)
        except aiohttp.ClientConnectorError:
            raise  # could not connect: nothing was sent
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
            if attempt == 1 and _REUSED.get():
                continue
            raise ConnectionBroke(describe_error(e)) from e
    raise AssertionError("unreachable")


def describe_error(e: BaseException) -> str:
    """A failed request, for the log and the flow's decision: what failed and where, in words
    (aiohttp's own text names its SSLContext object even for plain-HTTP URLs)."""
    if isinstance(e, aiohttp.ClientConnectorError):
        cause = e.os_error
        # "Connect call failed ('127.0.0.1', 1)" says less than "Connection refused"; a TLS error says what it is
        words = os.strerror(cause.errno) if cause.errno and not isinstance(cause, ssl.SSLError) else str(cause)
        return f"cannot connect to {e.host}:{e.port}: {words}"
    return f"{type(e).__name__}: {e}"


_REUSE_TRACE = aiohttp.TraceConfig()
_REUSE_TRACE.on_connection_reuseconn.append(_note_reused)


class _ExactRequest(aiohttp.ClientRequest):
    """aiohttp's request, its headers kept as given: aiohttp would put Host first and keep one
    Host header only. The URL's host:port is the Host only when the caller gave none."""

    def update_headers(self, headers: Any) -> None:
        given: list[tuple[str, str]] = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        if not any(name.lower() == "host" for name, _ in given):
            host = self.url.host_port_subcomponent
            assert host is not None
            given.insert(0, ("Host", host))
        self.headers = CIMultiDict(given)


def exact_url(scheme: str, host: str, port: int, target: str) -> yarl.URL:
    """scheme://host:port`target`, the target (path and query) sent byte for byte."""
    if not target.startswith("/") or not _TARGET_BYTES.issuperset(target) or "#" in target:
        raise NotSendable(f"a request target aiohttp would not send as it is: {target!r}")
    authority = f"[{host}]" if ":" in host else host
    url = yarl.URL(f"{scheme}://{authority}:{port}{target}", encoded=True)
    if url.raw_path_qs != target or (url.raw_host or "").lower() != host.lower():
        raise NotSendable(f"a request target aiohttp would not send as it is: {target!r}")
    return url


def absolute_url(url: str) -> yarl.URL:
    """An absolute http(s) URL as text (a rule's, or a redirect's Location): its path and query
    sent as they are, with only what cannot go in a request line percent-encoded (spaces,
    control characters, non-ASCII as UTF-8); no dot segment removed; no user info (no
    credentials from a Location); the fragment left out."""
    parts = urlsplit(url)
    try:
        base = yarl.URL(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}")  # the host IDNA-encoded, the port checked
    except ValueError as e:
        raise NotSendable(f"{url!r}: {e}") from None
    if base.scheme not in ("http", "https") or not base.raw_host or base.port is None:
        raise NotSendable(f"not an absolute http(s) URL: {url!r}")
    target = quote(parts.path or "/", safe=_PRINTABLE, errors="surrogateescape")
    if parts.query:
        target += "?" + quote(parts.query, safe=_PRINTABLE, errors="surrogateescape")
    return exact_url(base.scheme, base.raw_host, base.port, target)


def wire_headers(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Raw header fields as aiohttp takes them (text it writes as UTF-8). Refused: bytes that are
    not UTF-8, and a header repeated under names of another case (aiohttp would keep one value)."""
    try:
        headers = [(name.decode("utf-8"), value.decode("utf-8")) for name, value in fields]
    except UnicodeDecodeError as e:
        raise NotSendable(f"a header that is not UTF-8: {e}") from None
    names: dict[str, str] = {}
    for name, _ in headers:
        if names.setdefault(name.lower(), name) != name:
            raise NotSendable(f"the header {name!r} repeated as {names[name.lower()]!r}")
    return headers


def decoded_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """An answer's headers as text, as httpx decoded them: ASCII or UTF-8 when all of them are,
    else Latin-1 (any byte is one character, so nothing is lost)."""
    fields = tuple(raw)
    joined = b"".join(name + value for name, value in fields)
    encoding = "ascii" if joined.isascii() else "utf-8"
    try:
        return tuple((name.decode(encoding), value.decode(encoding)) for name, value in fields)
    except UnicodeDecodeError:
        return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in fields)


def joined(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header values by lowercase name, repeated ones joined with ", " (as one header would say them)."""
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        found[key] = f"{found[key]}, {value}" if key in found else value
    return found


@cache
def _verified(ca: str | None) -> ssl.SSLContext:
    if ca is not None and Path(ca).is_dir():
        return ssl.create_default_context(capath=ca)
    return ssl.create_default_context(cafile=ca or certifi.where())


def tls(verify: bool | str) -> ssl.SSLContext | bool:
    """aiohttp's `ssl=` for a verification setting: off (False), on against certifi's CA store
    (True, as httpx and mitmproxy), or against the CA file or folder named. One context per
    setting, so that connections pool."""
    if verify is False:
        return False
    return _verified(verify if isinstance(verify, str) else None)


@cache
def timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    """`connect`: to open a connection (TCP and TLS, each time); `read`: between two reads of the
    answer, from the request sent. No bound on the whole: the caller keeps its own."""
    return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect, sock_read=read)


class Session:
    """One aiohttp session, made when first used, on the running loop (mitmproxy's), and again
    on another loop; `aclose` closes it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE),
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False, skip_auto_headers=_SKIPPED,
                request_class=_ExactRequest, middlewares=(_sent_once,), trace_configs=[_REUSE_TRACE],
                requote_redirect_url=False, raise_for_status=False,
                max_line_size=MAX_LINE_SIZE, max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS)
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()
