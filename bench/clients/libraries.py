"""The candidates that are libraries: (a) httpx's transport, as s3/storeclient.py and miss/origin.py used
it; (b) httpcore's pool, used directly; (c) aiohttp (C parser and writer), when it is installed."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpcore
import httpx

from bench.clients.ask import Ask, Opened, Reading, timeouts

# ---------------------------------------------------------------------------------------
# (a) httpx's transport, as store.py and origin.py use it


class HttpxTransport(Reading):
    name = "httpx transport"

    def __init__(self) -> None:
        self._transports: dict[tuple[object, str | None], httpx.AsyncHTTPTransport] = {}

    def _transport(self, ask: Ask) -> httpx.AsyncHTTPTransport:
        key = (ask.verify, ask.proxy)
        if key not in self._transports:
            self._transports[key] = httpx.AsyncHTTPTransport(verify=ask.verify, proxy=ask.proxy,
                                                             limits=httpx.Limits(max_connections=None))
        return self._transports[key]

    @asynccontextmanager
    async def _open(self, ask: Ask) -> AsyncIterator[Opened]:
        extensions: dict[str, Any] = {"timeout": timeouts(ask)}
        if ask.sni:
            extensions["sni_hostname"] = ask.sni
        url = httpx.URL(scheme=ask.scheme, host=ask.host, port=ask.port, raw_path=ask.target)
        response = await self._transport(ask).handle_async_request(
            httpx.Request(ask.method, url, headers=list(ask.headers), extensions=extensions))
        try:
            yield Opened(response.status_code, lambda: tuple(response.headers.multi_items()), response.aiter_raw())
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


# ---------------------------------------------------------------------------------------
# (b) httpcore's pool, used directly


class HttpcorePool(Reading):
    name = "httpcore pool"

    def __init__(self) -> None:
        self._pools: dict[tuple[object, str | None], httpcore.AsyncConnectionPool] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def _pool(self, ask: Ask) -> httpcore.AsyncConnectionPool:
        key = (ask.verify, ask.proxy)
        if key not in self._pools:
            if isinstance(ask.verify, ssl.SSLContext):
                context = ask.verify
            else:
                context = self._contexts.setdefault(ask.verify, httpx.create_ssl_context(verify=ask.verify))
            proxy = httpcore.Proxy(ask.proxy) if ask.proxy else None
            self._pools[key] = httpcore.AsyncConnectionPool(ssl_context=context, proxy=proxy, max_connections=None)
        return self._pools[key]

    @asynccontextmanager
    async def _open(self, ask: Ask) -> AsyncIterator[Opened]:
        extensions: dict[str, Any] = {"timeout": timeouts(ask)}
        if ask.sni:
            extensions["sni_hostname"] = ask.sni
        url = httpcore.URL(scheme=ask.scheme.encode(), host=ask.host.encode(), port=ask.port, target=ask.target)
        response = await self._pool(ask).handle_async_request(
            httpcore.Request(ask.method.encode(), url, headers=list(ask.headers), extensions=extensions))
        try:
            yield Opened(response.status, lambda: tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
                         response.aiter_stream())
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


# ---------------------------------------------------------------------------------------
# (c) aiohttp


class Aiohttp(Reading):
    name = "aiohttp"

    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    def _request(self, ask: Ask) -> Any:
        aiohttp = self._aiohttp
        if self._session is None:  # made in the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ssl=True),
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"), requote_redirect_url=False)
        key = (ask.connect_timeout, ask.read_timeout)
        if key not in self._timeouts:
            self._timeouts[key] = aiohttp.ClientTimeout(total=None, sock_connect=ask.connect_timeout, sock_read=ask.read_timeout)
        import yarl

        return self._session.request(
            ask.method, yarl.URL(ask.url, encoded=True), headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in ask.headers],
            allow_redirects=False, timeout=self._timeouts[key], ssl=ask.verify, server_hostname=ask.sni, proxy=ask.proxy)

    @asynccontextmanager
    async def _open(self, ask: Ask) -> AsyncIterator[Opened]:
        async with self._request(ask) as response:
            yield Opened(int(response.status), lambda: tuple(response.headers.items()), response.content.iter_any())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
