"""backorigin: OSS-style mirror back-to-origin for any S3-compatible store.

Run it as:  mitmdump -s addon/backorigin.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

The addon only wires the modules: s3 (which object), rules (which rule), origin (fetch),
replies (client response), writeback (store the object). It holds no policy of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from mitmproxy import ctx, exceptions, http

from addon import replies, s3
from addon.flight import SingleFlight
from addon.origin import OriginClient, OriginRequest, OriginResult, UnsafeKey, build_request
from addon.rules import DEFAULT_MAX_RULES, MAX_RULES_CEILING, RuleBook, RulesError, RoutingRule, load_rules
from addon.writeback import ACAO_META, ORIGIN_URL_META, ObjectUpload, WriteBack

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

    async def response(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.request.method != "GET" or flow.response is None:
            return
        ref = s3.object_ref(flow.request)
        if ref is None or not self.rulebook.rules_for(ref.bucket) or not s3.is_plain_object_call(flow.request):
            return
        if flow.response.status_code in (200, 206):
            tag_stored_mirror(flow.response)
        elif s3.is_no_such_key(flow.response):
            rule = self.rulebook.first_match(ref.bucket, ref.key, 404)
            if rule is not None:
                flow.response = await self._mirror(flow, ref, rule)

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
        result = await self.flights.do(flight, lambda: self._fetch_and_store(endpoint, ref, request))
        logger.info(
            "bucket %s, RuleNumber %d: %s -> %s",
            ref.bucket, rule.RuleNumber, result.url, result.status or result.failure,
        )
        if result.ok:
            return replies.mirrored(flow.request, ref, result)
        if result.status == 404:
            return flow.response
        if result.location and not request.follow_redirects:
            return replies.origin_redirect(flow.request, result)
        return replies.mirror_failed(flow.request, ref, result.failure or f"the origin answered {result.status}")

    async def _fetch_and_store(self, endpoint: str, ref: s3.ObjectRef, request: OriginRequest) -> OriginResult:
        result = await self.origin.fetch(request)
        if result.ok:
            self.writeback.submit(
                ObjectUpload(endpoint, ref.bucket, ref.key, result.body, result.storable_headers, result.url)
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


def tag_stored_mirror(response: http.Response) -> None:
    """Objects stored by a mirror say so on every download, as OSS does (x-oss-tag)."""
    origin_url = response.headers.get(f"x-amz-meta-{ORIGIN_URL_META}")
    if origin_url:
        response.headers["x-oss-tag"] = replies.oss_tag(origin_url)
        acao = response.headers.get(f"x-amz-meta-{ACAO_META}")
        if acao and "access-control-allow-origin" not in response.headers:
            response.headers["access-control-allow-origin"] = acao


addons = [BackOrigin()]
