"""backorigin: OSS-style mirror back-to-origin for any S3-compatible store.

Run it as:  mitmdump -s addon/backorigin.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

The addon only wires the modules: s3 (which object), rules (which rule), redirect
(Location), origin (fetch), replies (client response), objectmeta and writeback (store
the object). It holds no policy of its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

from mitmproxy import ctx, exceptions, http

from mitmproxy.proxy.mode_specs import ReverseMode

from addon import objectmeta, redirect, replies, s3, streaming
from addon.integrity import BodyCheck
from addon.flight import SingleFlight
from addon.origin import (
    STORABLE_HEADERS,
    OriginClient,
    OriginRequest,
    OriginResult,
    Timeouts,
    UnsafeKey,
    build_request,
    presigned_url,
)
from addon.rules import LOOP_HEADER, DEFAULT_MAX_RULES, MAX_RULES_CEILING, RoutingRule, RuleBook, RulesError, load_rules
from addon.writeback import ObjectUpload, WriteBack

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per origin request is noise


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_TIMEOUT_OPTIONS = {
    "backorigin_origin_connect_timeout": "connect",
    "backorigin_origin_read_timeout": "read",
    "backorigin_origin_timeout": "total",
    "backorigin_copy_timeout": "copy",
}
DEFERRED_RETRY_EVERY = 30.0  # seconds between retries of write-backs the store refused for now


def parse_seconds(option: str, text: str) -> float:
    """Seconds given as text ("10", "0.5"): mitmproxy's --set cannot parse floats."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise exceptions.OptionsError(f"{option}: {text!r} is not a positive number of seconds")
    return seconds


def parse_size(option: str, text: str) -> int:
    """Bytes given as text: "65536", "512k", "64m", "1g" (binary multiples)."""
    match = _SIZE.match(text)
    if not match:
        raise exceptions.OptionsError(f"{option}: {text!r} is not a size (like 512k, 64m, 1g)")
    return int(match.group(1)) * 1024 ** " kmgt".index((match.group(2) or " ").lower())


def store_endpoint(request: http.Request) -> str:
    """scheme://host:port of the store that answered this request."""
    host = f"[{request.host}]" if ":" in request.host else request.host
    return f"{request.scheme}://{host}:{request.port}"


class BackOrigin:
    def __init__(self) -> None:
        self.rulebook = RuleBook(source="", buckets={})
        self.origin = OriginClient(Timeouts(), max_inline=64 * 1024**2)
        self.writeback: WriteBack | None = None  # needs the spool directory: made in configure
        self.flights: SingleFlight[OriginResult] = SingleFlight()
        self._background: set[asyncio.Task] = set()  # large-object copies and the retry timer
        self._streams: dict[str, streaming.StreamedMiss] = {}  # flow id -> a miss re-routed to the origin
        self.known_objects = streaming.ExistenceCache()

    def load(self, loader) -> None:
        loader.add_option("backorigin_rules", str, "rules.json", "Path of the rules file (OSS RoutingRule names, JSON).")
        loader.add_option(
            "backorigin_max_rules", int, DEFAULT_MAX_RULES,
            f"Most rules a bucket may have (OSS: 5 in the documents we follow, up to {MAX_RULES_CEILING}).",
        )
        loader.add_option(
            "backorigin_origin_timeout", str, "10",
            "Seconds an origin fetch may take in all, redirects included (text, e.g. \"0.5\").",
        )
        loader.add_option("backorigin_origin_connect_timeout", str, "5", "Seconds to connect to an origin.")
        loader.add_option("backorigin_origin_read_timeout", str, "10", "Seconds an origin may stay silent mid-answer.")
        loader.add_option(
            "backorigin_max_inline", str, "64m",
            "Largest origin body answered from memory; a larger one is answered with a 302 to the "
            "origin and copied into the store in the background, through a file.",
        )
        loader.add_option("backorigin_copy_timeout", str, "3600", "Seconds a background copy of a large object may take.")
        loader.add_option(
            "backorigin_large_objects", str, "redirect",
            "How misses are answered past backorigin_max_inline: 'redirect' (302 to the origin, copy in the "
            "background; for browsers and CDNs) or 'stream' (ask the store first, then stream every miss from "
            "the origin through the proxy; also for SDK clients that do not follow redirects).",
        )
        loader.add_option(
            "backorigin_s3_endpoint", Optional[str], None,
            "Endpoint for write-backs (e.g. http://127.0.0.1:8333). "
            "Default: the scheme, host and port that answered the 404.",
        )
        loader.add_option(
            "backorigin_spool_dir", Optional[str], None,
            "Directory where pending write-backs wait (they survive restarts). Default: CONFDIR/backorigin-spool.",
        )
        loader.add_option("backorigin_writeback_workers", int, 4, "Uploads running at once.")
        loader.add_option(
            "backorigin_writeback_queue", int, 1000,
            "Most write-backs pending at once; past it a miss is answered but not stored (it mirrors again next time).",
        )
        loader.add_option("backorigin_shutdown_timeout", str, "30", "Seconds shutdown waits for pending write-backs.")

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        if "backorigin_max_rules" in updated and not 1 <= options.backorigin_max_rules <= MAX_RULES_CEILING:
            raise exceptions.OptionsError(
                f"backorigin_max_rules: {options.backorigin_max_rules} is outside 1..{MAX_RULES_CEILING}"
            )
        if {"backorigin_rules", "backorigin_max_rules"} & updated:
            try:
                self.rulebook = load_rules(options.backorigin_rules, options.backorigin_max_rules)
            except RulesError as e:
                raise exceptions.OptionsError(str(e)) from None
            logger.info(
                "%s: rules for %d bucket(s): %s",
                self.rulebook.source, len(self.rulebook.buckets), ", ".join(self.rulebook.buckets) or "none",
            )
        if set(_TIMEOUT_OPTIONS) & updated:
            self.origin.timeouts = Timeouts(
                **{field: parse_seconds(name, getattr(options, name)) for name, field in _TIMEOUT_OPTIONS.items()}
            )
        if "backorigin_max_inline" in updated:
            self.origin.max_inline = parse_size("backorigin_max_inline", options.backorigin_max_inline)
        if "backorigin_shutdown_timeout" in updated:
            parse_seconds("backorigin_shutdown_timeout", options.backorigin_shutdown_timeout)
        if "backorigin_large_objects" in updated and options.backorigin_large_objects not in ("redirect", "stream"):
            raise exceptions.OptionsError(
                f"backorigin_large_objects: {options.backorigin_large_objects!r} is neither 'redirect' nor 'stream'"
            )
        for name in ("backorigin_writeback_workers", "backorigin_writeback_queue"):
            if name in updated and getattr(options, name) < 1:
                raise exceptions.OptionsError(f"{name}: must be at least 1")
        if self.writeback is None or {"backorigin_spool_dir", "confdir"} & updated:
            spool = Path(options.backorigin_spool_dir or Path(options.confdir).expanduser() / "backorigin-spool")
            if self.writeback is not None and self.writeback.spool.directory != spool:
                raise exceptions.OptionsError("backorigin_spool_dir: cannot change while running; restart instead")
            self.writeback = WriteBack(spool, options.backorigin_writeback_workers, options.backorigin_writeback_queue)

    def running(self) -> None:
        """Resume what a previous run left spooled, and retry deferred write-backs now and then."""
        self.writeback.resume(ctx.options.backorigin_s3_endpoint)
        self._keep(asyncio.ensure_future(self._retry_deferred_forever()))

    async def _retry_deferred_forever(self) -> None:
        while True:
            await asyncio.sleep(DEFERRED_RETRY_EVERY)
            if count := self.writeback.retry_deferred():
                logger.info("retrying %d deferred write-back(s)", count)

    def _keep(self, task: asyncio.Task) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Refuse our own origin fetches coming back in (a loop), then let redirect rules
        without a status condition decide before the store is asked (OSS: "hide objects
        with a prefix"), unless an earlier rule needs the store's answer."""
        if flow.live and LOOP_HEADER in flow.request.headers and flow.response is None:
            logger.warning(
                "loop: %s came back into the proxy from our own origin fetch; a MirrorURL points at a "
                "domain that now resolves to this proxy or the store. Use the origin's IP address or "
                "another domain for it (with MirrorHost for the Host header).", flow.request.pretty_url,
            )
            ref = s3.object_ref(flow.request) or s3.ObjectRef("", "")
            flow.response = replies.mirror_failed(flow.request, ref, "loop: the origin URL leads back into the proxy")
            return
        candidate = self._candidate(flow)
        if candidate is None:
            return
        rule = self.rulebook.first_request_match(candidate.bucket, candidate.key, flow.request.method, flow.request.headers.get)
        if rule is None:
            return
        if rule.status_condition is None:
            flow.response = self._redirect(flow, candidate, rule)
        elif rule.Redirect.is_mirror and flow.request.method == "GET" and ctx.options.backorigin_large_objects == "stream":
            await self._stream_if_missing(flow, candidate, rule)

    async def _stream_if_missing(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule) -> None:
        endpoint = ctx.options.backorigin_s3_endpoint or store_endpoint(flow.request)
        known = (endpoint, ref.bucket, ref.key)
        if known in self.known_objects:
            return
        try:
            present = await asyncio.to_thread(streaming.store_has, self.writeback.client(endpoint), ref.bucket, ref.key)
        except Exception as e:  # the store will answer the flow itself; the 404 path still mirrors
            logger.warning("stream mode: cannot ask the store about s3://%s/%s: %s", ref.bucket, ref.key, e)
            return
        if present:
            self.known_objects.add(known)
            return
        try:
            request = build_request(rule, ref.key, flow.request)
        except UnsafeKey as e:
            logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, rule.RuleNumber, e)
            return
        self._streams[flow.id] = streaming.StreamedMiss(endpoint, ref, rule, request, flow.request.copy())
        streaming.reroute(flow, request)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A re-routed miss answered 200: stream it to the client and into a spool file."""
        miss = self._streams.get(flow.id)
        if miss is None or flow.response is None or flow.response.status_code != 200:
            return
        miss.origin_headers = tuple(flow.response.headers.items(multi=True))
        miss.tee = streaming.Tee(self.writeback.spool.new_body_path(), BodyCheck.for_headers(flow.response.headers))
        flow.response.stream = miss.tee
        streaming.streamed_headers(flow.response, keep=lambda name: name in STORABLE_HEADERS)
        flow.response.headers["x-oss-tag"] = replies.oss_tag(miss.request.url)

    def error(self, flow: http.HTTPFlow) -> None:
        miss = self._streams.pop(flow.id, None)
        if miss is not None and miss.tee is not None:
            miss.tee.discard()
            logger.warning("stream of %s broke off: %s; nothing stored", miss.request.url, flow.error)

    async def response(self, flow: http.HTTPFlow) -> None:
        miss = self._streams.pop(flow.id, None)
        if miss is not None:
            await self._finish_stream(flow, miss)
            return
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
            flow.response = await self._mirror(flow, flow.request, flow.response, candidate, rule)

    async def _finish_stream(self, flow: http.HTTPFlow, miss: streaming.StreamedMiss) -> None:
        if miss.tee is None:  # not a 200: answer as the buffered path would, from the original request
            store_404 = replies.s3_error(miss.original, 404, "NoSuchKey", "The specified key does not exist.", miss.ref)
            flow.response = await self._mirror(flow, miss.original, store_404, miss.ref, miss.rule)
            return
        check = miss.tee.check
        if not miss.tee.finished or check.failure():
            miss.tee.discard()
            logger.error("stream of %s for s3://%s/%s: %s; nothing stored", miss.request.url, miss.ref.bucket,
                         miss.ref.key, check.failure() or "incomplete")
            return
        logger.info("bucket %s, RuleNumber %d: streamed %s (%d bytes)", miss.ref.bucket, miss.rule.RuleNumber,
                    miss.request.url, check.size)
        result = OriginResult(miss.request.url, 200, miss.origin_headers, size=check.size, md5=check.md5_base64,
                              not_storable=check.mismatch())
        if miss.rule.Redirect.MirrorProxyPass:
            miss.tee.discard()
        else:
            self._store(miss.endpoint, miss.ref, miss.rule, result, miss.tee.path)

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

    async def _mirror(
        self, flow: http.HTTPFlow, client_request: http.Request, store_404: http.Response, ref: s3.ObjectRef, rule: RoutingRule
    ) -> http.Response:
        """Answer a miss from the origin (buffered up to max_inline) and start the write-back."""
        try:
            request = build_request(rule, ref.key, client_request)
        except UnsafeKey as e:
            logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, rule.RuleNumber, e)
            return store_404
        endpoint = ctx.options.backorigin_s3_endpoint or store_endpoint(client_request)
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
        if result.too_large:  # the client reads it from the origin; a copy goes to the store
            target = presigned_url(result.final_url, action.MirrorAuth) if action.MirrorAuth else result.final_url
            return replies.redirect(client_request, 302, target, [("x-oss-tag", replies.oss_tag(result.url))])
        if result.ok:
            if request.method == "HEAD":
                return replies.mirrored_head(client_request, result, extra)
            return replies.mirrored(client_request, ref, result, extra)
        if result.status == 404:
            return store_404
        if result.status in request.transparent_codes:
            return replies.transparent(client_request, result)
        if result.location and not request.follow_redirects:
            return replies.redirect(client_request, result.status or 302, result.location)
        return replies.mirror_failed(client_request, ref, result.failure or f"the origin answered {result.status}")

    async def _fetch_and_store(
        self, endpoint: str, ref: s3.ObjectRef, rule: RoutingRule, request: OriginRequest
    ) -> OriginResult:
        result = await self.origin.fetch(request)
        if not (result.ok or result.too_large) or request.method == "HEAD":
            return result
        if rule.Redirect.MirrorProxyPass:
            logger.info("not stored: MirrorProxyPass serves s3://%s/%s from the origin only", ref.bucket, ref.key)
        elif result.too_large:
            self._keep(asyncio.ensure_future(self._copy_large(endpoint, ref, rule, request, result)))
        else:
            self._store(endpoint, ref, rule, result)
        return result

    def _store(
        self, endpoint: str, ref: s3.ObjectRef, rule: RoutingRule, result: OriginResult, body_file: Path | None = None
    ) -> None:
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

    async def _copy_large(
        self, endpoint: str, ref: s3.ObjectRef, rule: RoutingRule, request: OriginRequest, first: OriginResult
    ) -> None:
        """Stream a body over max_inline to a spool file, checking it on the way, then store it."""
        body_file = self.writeback.spool.new_body_path()
        copied = await self.origin.copy(request, first.final_url, body_file)
        if copied.ok:
            logger.info("copied %s (%d bytes) for s3://%s/%s", first.final_url, copied.size, ref.bucket, ref.key)
            self._store(endpoint, ref, rule, replace(copied, url=first.url), body_file)
        else:
            body_file.unlink(missing_ok=True)
            logger.error("copy of %s for s3://%s/%s failed: %s", first.final_url, ref.bucket, ref.key,
                         copied.failure or f"the origin answered {copied.status}")

    def done(self) -> asyncio.Task[None]:
        # Synchronous on purpose: mitmproxy calls done() synchronously on script reload,
        # so an async def would silently never run there. The returned task is awaited
        # by mitmdump at shutdown.
        return asyncio.ensure_future(self._shutdown())

    async def _shutdown(self) -> None:
        timeout = parse_seconds("backorigin_shutdown_timeout", ctx.options.backorigin_shutdown_timeout)
        copies = [t for t in self._background if not t.done()]
        for task in copies:
            task.cancel()  # an unfinished large copy is dropped; the object mirrors again next time
        await asyncio.gather(*copies, return_exceptions=True)
        await self.writeback.drain(timeout)
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
