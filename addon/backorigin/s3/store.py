"""The store as a flow sees it: its endpoint, the upstream proxy and TLS verification mitmproxy
uses for it, the host the client addressed; and `StoreClient`, which sends the client's own
request to the store before mitmproxy does (the store still authorises: a SigV4 signature stays
valid because nothing it covers changes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode, UpstreamMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from backorigin.limits import STORE_ERROR_BODY_LIMIT
from backorigin.s3.addressing import virtual_host_bucket

logger = logging.getLogger(__name__)

# Framing of a body the proxy does not send: a request sent without its body announces none.
_NOT_FORWARDED = frozenset({b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"expect"})


def store_endpoint(request: http.Request, vhost_domains: Sequence[str] = ()) -> str:
    """scheme://host:port of the store that answered this request. A virtual-hosted name
    (bucket.DOMAIN) becomes DOMAIN: write-backs address buckets path-style."""
    host = request.host
    if vhost_domains and (found := virtual_host_bucket(host, vhost_domains)):
        host = found[1]
    host = f"[{host}]" if ":" in host else host
    return f"{request.scheme}://{host}:{request.port}"


def reverse_target(options: Any) -> str | None:
    """The store of a reverse proxy (--mode reverse:URL), when there is one."""
    for spec in getattr(options, "mode", []):
        mode = ProxyMode.parse(spec)
        if isinstance(mode, ReverseMode):
            host, port = mode.address
            return f"{mode.scheme}://{host}:{port}"
    return None


class StoreServerName:
    """A child addon. In reverse mode with keep_host_header (SigV4 clients need it), mitmproxy
    sends an HTTPS store the name the client used for the proxy (SNI) and checks the store's
    certificate against it: a client that reaches the proxy by a name of its own would get 502
    "hostname mismatch" on every request mitmproxy forwards. The store is sent its own name, as
    mitmproxy does without keep_host_header; the Host header is left as the client sent it."""

    def server_connect(self, data: ServerConnectionHookData) -> None:
        mode = data.client.proxy_mode
        if (isinstance(mode, ReverseMode) and mode.scheme == "https" and data.server.address == mode.address
                and getattr(ctx.options, "keep_host_header", False)):
            data.server.sni = mode.address[0]


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


@dataclass(frozen=True)
class StoreAnswer:
    """The store's answer to a GET or HEAD: status, headers, and the body of an error (up to
    STORE_ERROR_BODY_LIMIT, enough to tell NoSuchKey from NoSuchBucket)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


class StoreClient:
    """Pooled HTTP clients to the store: direct, or through mitmproxy's upstream proxy."""

    def __init__(self, verify: bool | str = True) -> None:
        self.verify = verify
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, via: str | None) -> httpx.AsyncClient:
        if via not in self._clients:
            self._clients[via] = httpx.AsyncClient(verify=self.verify, trust_env=False, follow_redirects=False,
                                                   timeout=httpx.Timeout(30.0, connect=5.0), proxy=via)
        return self._clients[via]

    async def ask(self, request: http.Request, via: str | None = None,
                  extra: Sequence[tuple[bytes, bytes]] = ()) -> StoreAnswer | None:
        """The store's answer to `request` as the client sent it, without its body (a GET or HEAD
        has none), plus `extra` headers the signature does not cover; through the proxy `via` in
        upstream mode. None (logged) when the store cannot be reached."""
        headers = [(k, v) for k, v in request.headers.fields if k.lower() not in _NOT_FORWARDED]
        headers += extra
        url = httpx.URL(scheme=request.scheme, host=request.host, port=request.port,
                        raw_path=request.path.encode("utf-8", "surrogateescape"))
        try:
            async with self._client(via).stream(request.method, url, headers=headers) as answer:
                body = b""
                if answer.status_code >= 400:
                    async for chunk in answer.aiter_raw():
                        body += chunk
                        if len(body) > STORE_ERROR_BODY_LIMIT:
                            break
                return StoreAnswer(answer.status_code, tuple(answer.headers.multi_items()), body)
        except httpx.HTTPError as e:
            logger.warning("cannot ask the store about %s: %s: %s", request.pretty_url, type(e).__name__, e)
            return None
