"""Where a flow came from and goes to: the store's endpoint, the client-facing host, the
upstream proxy and the TLS verification mitmproxy uses for the store. Pure functions of a flow
and options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ReverseMode, UpstreamMode


def store_endpoint(request: http.Request, vhost_domains: Sequence[str] = ()) -> str:
    """scheme://host:port of the store that answered this request. A virtual-hosted name
    (bucket.DOMAIN) becomes DOMAIN: write-backs address buckets path-style."""
    host = request.host
    for domain in vhost_domains:
        if host.lower().endswith("." + domain.lower()):
            host = host[-len(domain):]
            break
    host = f"[{host}]" if ":" in host else host
    return f"{request.scheme}://{host}:{request.port}"


def upstream_verification(options: Any) -> bool | str:
    """How the store probe checks an HTTPS store's certificate: as mitmproxy itself does."""
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
