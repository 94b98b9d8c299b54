"""The name an HTTPS store is sent (SNI) in reverse mode, as a child addon of BackOrigin."""

from __future__ import annotations

from mitmproxy import ctx
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData


class StoreServerName:
    """In reverse mode with keep_host_header (SigV4 clients need it), mitmproxy
    sends an HTTPS store the name the client used for the proxy (SNI) and checks the store's
    certificate against it: a client that reaches the proxy by a name of its own would get 502
    "hostname mismatch" on every request mitmproxy forwards. The store is sent its own name, as
    mitmproxy does without keep_host_header; the Host header is left as the client sent it."""

    def server_connect(self, data: ServerConnectionHookData) -> None:
        mode = data.client.proxy_mode
        if (isinstance(mode, ReverseMode) and mode.scheme == "https" and data.server.address == mode.address
                and getattr(ctx.options, "keep_host_header", False)):
            data.server.sni = mode.address[0]
