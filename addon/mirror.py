"""Mirror back-to-origin for one miss: fetch (shared by concurrent misses), answer, store.

`Mirror` owns the origin client, the write-back and the work in flight; every entry point
returns the client's answer and a `Decision` saying what happened. With `side_effects`
false (dry run, replayed flows) nothing is fetched or stored: the decision is made and the
store's own answer stays.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from mitmproxy import http

from addon import objectmeta, replies, streaming
from addon.decision import Decision
from addon.flight import SingleFlight
from addon.integrity import BodyCheck
from addon.origin import (
    STORABLE_HEADERS,
    OriginClient,
    OriginRequest,
    OriginResult,
    UnsafeKey,
    build_request,
    presigned_url,
)
from addon.rules import RoutingRule
from addon.s3 import ObjectRef
from addon.writeback import ObjectUpload, WriteBack

logger = logging.getLogger(__name__)


class Mirror:
    def __init__(self, origin: OriginClient, writeback: WriteBack) -> None:
        self.origin = origin
        self.writeback = writeback
        self.flights: SingleFlight[OriginResult] = SingleFlight()
        self.background: set[asyncio.Task] = set()  # large-object copies
        self.streams: dict[str, streaming.StreamedMiss] = {}  # flow id -> a miss re-routed to the origin
        self.known_objects = streaming.ExistenceCache()

    # buffered path ---------------------------------------------------------------------------

    async def answer(
        self, client_request: http.Request, store_404: http.Response, ref: ObjectRef, rule: RoutingRule,
        endpoint: str, side_effects: bool = True,
    ) -> tuple[http.Response, Decision]:
        """Answer a miss from the origin (buffered up to max_inline) and start the write-back."""
        decision = Decision(ref.bucket, ref.key, "mirror", rule.RuleNumber)
        try:
            request = build_request(rule, ref.key, client_request)
        except UnsafeKey as e:
            logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, rule.RuleNumber, e)
            return store_404, replace(decision, outcome="unsafe-key", detail=str(e))
        decision.origin_url = request.url
        if not side_effects:
            return store_404, replace(decision, outcome="dry-run")
        flight = (endpoint, ref, request.flight_key)
        if flight in self.flights:
            logger.info("another client joins the origin fetch under way for %s", ref.key)
        result = await self.flights.do(flight, lambda: self._fetch_and_store(endpoint, ref, rule, request))
        logger.info(
            "bucket %s, RuleNumber %d: %s %s -> %s",
            ref.bucket, rule.RuleNumber, request.method, result.url, result.status or result.failure,
        )
        decision.origin_url, decision.origin_status, decision.bytes = result.url, result.status, result.size
        return self._reply(client_request, store_404, ref, rule, request, result, decision)

    @staticmethod
    def _reply(
        client_request: http.Request, store_404: http.Response, ref: ObjectRef, rule: RoutingRule,
        request: OriginRequest, result: OriginResult, decision: Decision,
    ) -> tuple[http.Response, Decision]:
        action = rule.Redirect
        extra = objectmeta.mirrored_extra_headers(result, action)
        if result.too_large:  # the client reads it from the origin; a copy goes to the store
            target = presigned_url(result.final_url, action.MirrorAuth) if action.MirrorAuth else result.final_url
            reply = replies.redirect(client_request, 302, target, [("x-oss-tag", replies.oss_tag(result.url))])
            return reply, replace(decision, outcome="too-large", location=result.final_url, writeback=_stored_how(rule, "copying"))
        if result.ok and request.method == "HEAD":
            return replies.mirrored_head(client_request, result, extra), replace(decision, outcome="head")
        if result.ok:
            return replies.mirrored(client_request, ref, result, extra), replace(
                decision, outcome="mirrored", writeback=_stored_how(rule, "queued", result.not_storable)
            )
        if result.status == 404:
            return store_404, replace(decision, outcome="origin-404")
        if result.status in request.transparent_codes:
            return replies.transparent(client_request, result), replace(decision, outcome="transparent")
        if result.location and not request.follow_redirects:
            reply = replies.redirect(client_request, result.status or 302, result.location)
            return reply, replace(decision, outcome="origin-redirect", location=result.location)
        failure = result.failure or f"the origin answered {result.status}"
        return replies.mirror_failed(client_request, ref, failure), replace(decision, outcome="mirror-failed", detail=failure)

    async def _fetch_and_store(self, endpoint: str, ref: ObjectRef, rule: RoutingRule, request: OriginRequest) -> OriginResult:
        result = await self.origin.fetch(request)
        if not (result.ok or result.too_large) or request.method == "HEAD":
            return result
        if rule.Redirect.MirrorProxyPass:
            logger.info("not stored: MirrorProxyPass serves s3://%s/%s from the origin only", ref.bucket, ref.key)
        elif result.too_large:
            task = asyncio.ensure_future(self._copy_large(endpoint, ref, rule, request, result))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        else:
            self.store(endpoint, ref, rule, result)
        return result

    def store(self, endpoint: str, ref: ObjectRef, rule: RoutingRule, result: OriginResult, body_file: Path | None = None) -> None:
        if result.not_storable:
            logger.warning("not stored: s3://%s/%s: %s", ref.bucket, ref.key, result.not_storable)
            if body_file:
                body_file.unlink(missing_ok=True)
            return
        upload = ObjectUpload(
            endpoint, ref.bucket, ref.key, result.storable_headers,
            objectmeta.user_metadata(result, rule.Redirect), result.size, result.md5,
        )
        self.writeback.submit(upload, body=None if body_file else result.body, source=body_file)

    async def _copy_large(self, endpoint: str, ref: ObjectRef, rule: RoutingRule, request: OriginRequest, first: OriginResult) -> None:
        """Stream a body over max_inline to a spool file, checking it on the way, then store it."""
        body_file = self.writeback.spool.new_body_path()
        copied = await self.origin.copy(request, first.final_url, body_file)
        if copied.ok:
            logger.info("copied %s (%d bytes) for s3://%s/%s", first.final_url, copied.size, ref.bucket, ref.key)
            self.store(endpoint, ref, rule, replace(copied, url=first.url), body_file)
        else:
            body_file.unlink(missing_ok=True)
            logger.error("copy of %s for s3://%s/%s failed: %s", first.final_url, ref.bucket, ref.key,
                         copied.failure or f"the origin answered {copied.status}")

    # stream mode -------------------------------------------------------------------------------

    async def stream_if_missing(self, flow: http.HTTPFlow, ref: ObjectRef, rule: RoutingRule, endpoint: str) -> None:
        """Stream mode: ask the store first; on a miss, send the flow to the origin."""
        known = (endpoint, ref.bucket, ref.key)
        if known in self.known_objects:
            return
        present = await self.store_has(endpoint, ref)
        if present is None:  # the store will answer the flow itself; the 404 path still mirrors
            return
        if present:
            self.known_objects.add(known)
            return
        try:
            request = build_request(rule, ref.key, flow.request)
        except UnsafeKey:
            return  # the store's 404 comes back and the buffered path says why
        self.streams[flow.id] = streaming.StreamedMiss(endpoint, ref, rule, request, flow.request.copy())
        streaming.reroute(flow, request)

    async def store_has(self, endpoint: str, ref: ObjectRef) -> bool | None:
        """Whether the store holds the object, asked with the proxy's own credentials off the
        event loop; None (logged) when the store cannot say."""
        try:
            return await asyncio.to_thread(streaming.store_has, self.writeback.client(endpoint), ref.bucket, ref.key)
        except Exception as e:
            logger.warning("cannot ask the store about s3://%s/%s: %s", ref.bucket, ref.key, e)
            return None

    def stream_headers(self, flow: http.HTTPFlow) -> None:
        """A re-routed miss answered 200: stream it to the client and into a spool file."""
        miss = self.streams.get(flow.id)
        if miss is None or flow.response is None or flow.response.status_code != 200:
            return
        miss.origin_headers = tuple(flow.response.headers.items(multi=True))
        miss.tee = streaming.Tee(self.writeback.spool.new_body_path(), BodyCheck.for_headers(flow.response.headers))
        flow.response.stream = miss.tee
        streaming.streamed_headers(flow.response, keep=lambda name: name in STORABLE_HEADERS)
        flow.response.headers["x-oss-tag"] = replies.oss_tag(miss.request.url)

    def stream_broke(self, flow: http.HTTPFlow) -> Decision | None:
        miss = self.streams.pop(flow.id, None)
        if miss is None:
            return None
        if miss.tee is not None:
            miss.tee.discard()
        logger.warning("stream of %s broke off: %s; nothing stored", miss.request.url, flow.error)
        return Decision(miss.ref.bucket, miss.ref.key, "mirror", miss.rule.RuleNumber, "stream-broken",
                        origin_url=miss.request.url, detail=str(flow.error))

    async def finish_stream(self, flow: http.HTTPFlow) -> Decision | None:
        """The response of a re-routed miss is complete: store the checked file, or answer
        a non-200 the way the buffered path would."""
        miss = self.streams.pop(flow.id, None)
        if miss is None:
            return None
        if miss.tee is None:
            store_404 = replies.no_such_key(miss.original, miss.ref)
            flow.response, decision = await self.answer(miss.original, store_404, miss.ref, miss.rule, miss.endpoint)
            return decision
        check = miss.tee.check
        decision = Decision(miss.ref.bucket, miss.ref.key, "mirror", miss.rule.RuleNumber, "streamed",
                            origin_url=miss.request.url, origin_status=200, bytes=check.size)
        if not miss.tee.finished or check.failure():
            miss.tee.discard()
            why = check.failure() or "incomplete"
            logger.error("stream of %s for s3://%s/%s: %s; nothing stored", miss.request.url, miss.ref.bucket, miss.ref.key, why)
            return replace(decision, outcome="stream-broken", detail=why)
        logger.info("bucket %s, RuleNumber %d: streamed %s (%d bytes)", miss.ref.bucket, miss.rule.RuleNumber,
                    miss.request.url, check.size)
        result = OriginResult(miss.request.url, 200, miss.origin_headers, size=check.size, md5=check.md5_base64,
                              not_storable=check.mismatch())
        if miss.rule.Redirect.MirrorProxyPass:
            miss.tee.discard()
        else:
            self.store(miss.endpoint, miss.ref, miss.rule, result, miss.tee.path)
        return replace(decision, writeback=_stored_how(miss.rule, "queued", result.not_storable))

    async def shutdown(self, timeout: float) -> None:
        copies = [t for t in self.background if not t.done()]
        for task in copies:
            task.cancel()  # an unfinished large copy is dropped; the object mirrors again next time
        await asyncio.gather(*copies, return_exceptions=True)
        await self.writeback.drain(timeout)
        await self.origin.aclose()


def _stored_how(rule: RoutingRule, normally: str, not_storable: str = "") -> str:
    if rule.Redirect.MirrorProxyPass:
        return "none (MirrorProxyPass)"
    return f"none ({not_storable})" if not_storable else normally
