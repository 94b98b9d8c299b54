"""The store as a flow sees it: the upstream proxy and TLS verification mitmproxy uses for it, the
host the client addressed; and `StoreClient`, which sends the client's own request to the store
before mitmproxy does (the store still authorises: a SigV4 signature stays valid because nothing
it covers changes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from mitmproxy import ctx, http
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ReverseMode, UpstreamMode

from backorigin import httpclient
from backorigin.limits import STORE_ERROR_BODY_LIMIT

logger = logging.getLogger(__name__)

_TIMEOUT = httpclient.timeout(connect=5.0, read=30.0)
# Framing of a body the proxy does not send: a request sent without its body announces none.
_NOT_FORWARDED = frozenset({b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"expect"})


def upstream_verification(options: Any) -> bool | str:
    """How the proxy's own requests check an HTTPS store's certificate: as mitmproxy itself does."""
    if getattr(options, "ssl_insecure", False):
        return False
    return getattr(options, "ssl_verify_upstream_trusted_ca", None) or True


def upstream_proxy(flow: http.HTTPFlow) -> str | None:
    """The proxy mitmproxy reaches the store through, in upstream mode."""
    mode = flow.client_conn.proxy_mode
    if isinstance(mode, UpstreamMode):
        host, port = mode.address
        return f"{mode.scheme}://{host}:{port}"
    return None


def client_facing(flow: http.HTTPFlow) -> tuple[str, str]:
    """(scheme, host[:port]) the client used. In reverse mode mitmproxy has already
    rewritten Host to the store's (unless keep_host_header), so the address the client
    connected to stands in for it."""
    scheme = "https" if flow.client_conn.tls_established else "http"
    # keep_host_header belongs to mitmproxy's proxy server addon, absent under bare taddons
    if isinstance(flow.client_conn.proxy_mode, ReverseMode) and not getattr(ctx.options, "keep_host_header", False):
        host, port = flow.client_conn.sockname[:2]
        return scheme, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return scheme, flow.request.host_header or flow.request.pretty_host


def _with_host(fields: Iterable[tuple[bytes, bytes]], host: str) -> list[tuple[bytes, bytes]]:
    """The fields the store check sends: framing left out, and `host` as the one Host, where the
    request had its first (first when it had none: HTTP/2 carries it as `:authority`)."""
    value = host.encode("utf-8", "surrogateescape")
    sent = [(name, value) if name.lower() == b"host" else (name, field) for name, field in fields
            if name.lower() not in _NOT_FORWARDED]
    hosts = [i for i, (name, _) in enumerate(sent) if name.lower() == b"host"]
    for extra in reversed(hosts[1:]):
        del sent[extra]
    return sent if hosts else [(b"Host", value), *sent]


def _length(value: str | None) -> int | None:
    """A Content-Length of ASCII digits (at most 18 of them), else None."""
    return int(value) if value and value.isascii() and value.isdigit() and len(value) <= 18 else None


@dataclass(frozen=True)
class StoreAnswer:
    """The store's answer to a GET or HEAD: status, headers (decoded as mitmproxy decodes them, so
    they go out byte for byte), and its body when `complete`; otherwise the start of an error's body
    (up to STORE_ERROR_BODY_LIMIT, enough to tell NoSuchKey from NoSuchBucket) or nothing."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    complete: bool = False  # `body` is the whole body: the answer can go to the client as it is
    reason: str = ""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def response(self) -> http.Response:
        """The answer for the client, exactly as the store gave it (a HEAD's Content-Length included)."""
        assert self.complete
        now = time.time()
        headers = Headers([(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for k, v in self.headers])
        return http.Response(b"HTTP/1.1", self.status, self.reason.encode("latin-1", "replace"), headers, self.body, None,
                             now, now)


class StoreClient:
    """Pooled connections to the store (httpclient: aiohttp), direct or through mitmproxy's upstream
    proxy. Nothing (no cookie) is kept from one client's request to another's, and no work grows
    faster than the request it sends. `verify` (see upstream_verification) may change at any time."""

    def __init__(self, verify: bool | str = True) -> None:
        self.verify = verify
        self._session = httpclient.Session()

    async def aclose(self) -> None:
        await self._session.aclose()

    async def ask(self, request: http.Request, host: str, via: str | None = None, keep_up_to: int = 0) -> StoreAnswer | None:
        """The store's answer to `request` as the client sent it, without its body (a GET or HEAD
        has none), with `host` as its Host: the one the store sees from mitmproxy (an HTTP/2
        request carries `:authority`, not a Host header; s3.reading); through the proxy `via` in
        upstream mode. A body up to `keep_up_to` bytes is read
        whole (the answer is then `complete`); a larger one is left unread, and the connection
        dropped. None (logged) when the store cannot be reached or the request cannot be sent as it
        is (a path that is not ASCII): mitmproxy then sends it and reports the store's answer."""
        try:
            url = httpclient.exact_url(request.scheme, request.host, request.port, request.path)
            headers = httpclient.wire_headers(_with_host(request.headers.fields, host))
            answer = await self._session.get().request(request.method, url, headers=headers, allow_redirects=False, timeout=_TIMEOUT,
                                                       ssl=httpclient.tls(self.verify), proxy=via)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            logger.warning("cannot ask the store about %r: %s: %s", request.pretty_url, type(e).__name__, e)
            return None
        ended = False
        try:
            status = answer.status
            bodiless = request.method == "HEAD" or status in (204, 304)
            # an error's start is read in any case: its code decides whether it is a miss
            read_up_to = 0 if bodiless else max(keep_up_to, STORE_ERROR_BODY_LIMIT) if status >= 400 else keep_up_to
            declared = _length(", ".join(answer.headers.getall("content-length", ())))  # a repeated one is no length
            body = bytearray()
            ended = bodiless or declared == 0
            if not ended and (status >= 400 or declared is None or declared <= read_up_to):
                async for chunk in answer.content.iter_any():
                    body += chunk
                    if len(body) > read_up_to:
                        break
                else:
                    ended = True
            received = tuple((k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in answer.raw_headers)
            # aiohttp decodes the reason as UTF-8 (surrogateescape); mitmproxy as Latin-1
            reason = (answer.reason or "").encode("utf-8", "surrogateescape").decode("latin-1")
            return StoreAnswer(status, received, bytes(body), ended and len(body) <= keep_up_to, reason)
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("cannot ask the store about %r: %s: %s", request.pretty_url, type(e).__name__, e)
            return None
        finally:
            if ended:
                answer.release()  # read to its end: the connection goes back to the pool
            else:
                answer.close()  # a body left unread (or broken): the connection is dropped
