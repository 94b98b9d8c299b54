"""backorigin: OSS-style mirror back-to-origin for any S3-compatible store.

Run it as:  mitmdump -s addon/backorigin.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

The addon only wires the modules: s3 (which object), rules (which rule), redirect
(Location), origin (fetch), replies (client response), objectmeta and writeback (store
the object). It holds no policy of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from mitmproxy import ctx, exceptions, http

from mitmproxy.proxy.mode_specs import ReverseMode

from addon import objectmeta, redirect, replies, s3
from addon.flight import SingleFlight
from addon.origin import OriginClient, OriginRequest, OriginResult, UnsafeKey, build_request
from addon.rules import DEFAULT_MAX_RULES, MAX_RULES_CEILING, RoutingRule, RuleBook, RulesError, load_rules
from addon.writeback import ObjectUpload, WriteBack

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per origin request is noise


def parse_seconds(option: str, text: str) -> float:
    """Seconds given as text ("10", "0.5"): mitmproxy's --set cannot parse floats."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise exceptions.OptionsError(f"{option}: {text!r} is not a positive number of seconds")
    return seconds


def store_endpoint(request: http.Request) -> str:
    """scheme://host:port of the store that answered this request."""
    host = f"[{request.host}]" if ":" in request.host else request.host
    return f"{request.scheme}://{host}:{request.port}"


class BackOrigin:
    def __init__(self) -> None:
        self.rulebook = RuleBook(source="", buckets={})
        self.origin = OriginClient(timeout=10.0)
        self.writeback = WriteBack()
        self.flights: SingleFlight[OriginResult] = SingleFlight()

    def load(self, loader) -> None:
        loader.add_option(
            "backorigin_rules", str, "rules.json",
            "Path of the rules file (OSS RoutingRule names, JSON).",
        )
        loader.add_option(
            "backorigin_max_rules", int, DEFAULT_MAX_RULES,
            f"Most rules a bucket may have (OSS: 5 in the documents we follow, up to {MAX_RULES_CEILING}).",
        )
        loader.add_option(
            "backorigin_origin_timeout", str, "10",
            "Seconds an origin fetch may take in all, redirects included (text, e.g. \"0.5\").",
        )
        loader.add_option(
            "backorigin_s3_endpoint", Optional[str], None,
            "Endpoint for write-backs (e.g. http://127.0.0.1:8333). "
            "Default: the scheme, host and port that answered the 404.",
        )
        loader.add_option(
            "backorigin_shutdown_timeout", str, "30",
            "Seconds shutdown waits for pending write-backs.",
        )

    def configure(self, updated: set[str]) -> None:
        if "backorigin_max_rules" in updated and not 1 <= ctx.options.backorigin_max_rules <= MAX_RULES_CEILING:
            raise exceptions.OptionsError(
                f"backorigin_max_rules: {ctx.options.backorigin_max_rules} is outside 1..{MAX_RULES_CEILING}"
            )
        if {"backorigin_rules", "backorigin_max_rules"} & updated:
            try:
                self.rulebook = load_rules(ctx.options.backorigin_rules, ctx.options.backorigin_max_rules)
            except RulesError as e:
                raise exceptions.OptionsError(str(e)) from None
            logger.info(
                "%s: rules for %d bucket(s): %s",
                self.rulebook.source, len(self.rulebook.buckets), ", ".join(self.rulebook.buckets) or "none",
            )
        if "backorigin_origin_timeout" in updated:
            self.origin.timeout = parse_seconds("backorigin_origin_timeout", ctx.options.backorigin_origin_timeout)
        if "backorigin_shutdown_timeout" in updated:
            parse_seconds("backorigin_shutdown_timeout", ctx.options.backorigin_shutdown_timeout)

    def request(self, flow: http.HTTPFlow) -> None:
        """Redirect rules without a status condition decide before the store is asked
        (OSS: "hide objects with a prefix"), unless an earlier rule needs the store's answer."""
        candidate = self._candidate(flow)
        if candidate is None:
            return
        rule = self.rulebook.decide_before_store(candidate.bucket, candidate.key, flow.request.method, flow.request.headers.get)
        if rule is not None:
            flow.response = self._redirect(flow, candidate, rule)

    async def response(self, flow: http.HTTPFlow) -> None:
        candidate = self._candidate(flow)
        if candidate is None or flow.response is None:
            return
        status = flow.response.status_code
        # a GET's 404 names its cause; only NoSuchKey is a missing object (HEAD has no body to tell)
        if status == 404 and flow.request.method == "GET" and not s3.is_no_such_key(flow.response):
            return
        rule = self.rulebook.decide_after_store(
            candidate.bucket, candidate.key, flow.request.method, flow.request.headers.get, status
        )
        if rule is None:
            if 200 <= status < 300:
                objectmeta.restore_on_download(flow.response)
        elif not rule.Redirect.is_mirror:
            flow.response = self._redirect(flow, candidate, rule)
        elif status == 404:
            flow.response = await self._mirror(flow, candidate, rule)

    def _candidate(self, flow: http.HTTPFlow) -> s3.ObjectRef | None:
        """The object a live GET/HEAD names, if its bucket has rules."""
        if not flow.live or flow.request.method not in ("GET", "HEAD") or not s3.is_plain_object_call(flow.request):
            return None
        ref = s3.object_ref(flow.request)
        return ref if ref is not None and self.rulebook.rules_for(ref.bucket) else None

    def _redirect(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule) -> http.Response:
        scheme, host = client_facing(flow)
        target = redirect.location(rule, ref, flow.request, scheme, host)
        logger.info("bucket %s, RuleNumber %d: %s %s -> %s", ref.bucket, rule.RuleNumber, rule.Redirect.RedirectType, ref.key, target)
        return replies.redirect(flow.request, rule.Redirect.HttpRedirectCode, target, redirect.extra_headers(rule))

    async def _mirror(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule) -> http.Response:
        try:
            request = build_request(rule, ref.key, flow.request)
        except UnsafeKey as e:
            logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, rule.RuleNumber, e)
            return flow.response
        endpoint = ctx.options.backorigin_s3_endpoint or store_endpoint(flow.request)
        flight = (endpoint, ref, request.flight_key)
        if flight in self.flights:
            logger.info("%s joins the origin fetch under way for %s", flow.client_conn.peername, ref.key)
        result = await self.flights.do(flight, lambda: self._fetch_and_store(endpoint, ref, rule, request))
        logger.info(
            "bucket %s, RuleNumber %d: %s %s -> %s",
            ref.bucket, rule.RuleNumber, request.method, result.url, result.status or result.failure,
        )
        action = rule.Redirect
        extra = objectmeta.mirrored_extra_headers(result, action)
        if result.ok:
            if request.method == "HEAD":
                return replies.mirrored_head(flow.request, result, extra)
            return replies.mirrored(flow.request, ref, result, extra)
        if result.status == 404:
            return flow.response
        if result.status in request.transparent_codes:
            return replies.transparent(flow.request, result)
        if result.location and not request.follow_redirects:
            return replies.redirect(flow.request, result.status or 302, result.location)
        return replies.mirror_failed(flow.request, ref, result.failure or f"the origin answered {result.status}")

    async def _fetch_and_store(
        self, endpoint: str, ref: s3.ObjectRef, rule: RoutingRule, request: OriginRequest
    ) -> OriginResult:
        result = await self.origin.fetch(request)
        action = rule.Redirect
        if not result.ok or request.method == "HEAD":
            return result
        if action.MirrorProxyPass:
            logger.info("not stored: MirrorProxyPass serves s3://%s/%s from the origin only", ref.bucket, ref.key)
        elif result.not_storable:
            logger.warning("not stored: s3://%s/%s: %s", ref.bucket, ref.key, result.not_storable)
        else:
            self.writeback.submit(
                ObjectUpload(
                    endpoint, ref.bucket, ref.key, result.body, result.storable_headers,
                    objectmeta.user_metadata(result, action),
                )
            )
        return result

    def done(self) -> asyncio.Task[None]:
        # Synchronous on purpose: mitmproxy calls done() synchronously on script reload,
        # so an async def would silently never run there. The returned task is awaited
        # by mitmdump at shutdown.
        return asyncio.ensure_future(self._shutdown())

    async def _shutdown(self) -> None:
        await self.writeback.drain(parse_seconds("backorigin_shutdown_timeout", ctx.options.backorigin_shutdown_timeout))
        await self.origin.aclose()


def client_facing(flow: http.HTTPFlow) -> tuple[str, str]:
    """(scheme, host[:port]) the client used. In reverse mode mitmproxy has already
    rewritten Host to the store's (unless keep_host_header), so the address the client
    connected to stands in for it."""
    scheme = "https" if flow.client_conn.tls_established else "http"
    if isinstance(flow.client_conn.proxy_mode, ReverseMode) and not ctx.options.keep_host_header:
        host, port = flow.client_conn.sockname[:2]
        return scheme, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return scheme, flow.request.host_header or flow.request.pretty_host


addons = [BackOrigin()]
