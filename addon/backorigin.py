"""backorigin: OSS-style mirror back-to-origin for any S3-compatible store.

Run it as:  mitmdump -s addon/backorigin.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

The addon only wires the modules: s3 (which object), rules (which rule), redirect
(Location), storeprobe (is it a miss, asked before mitmproxy sends the request), mirror
(fetch once, answer, store), missserver (where a miss is re-routed so that its answer
streams), decision (what happened, for people and tools). It holds no policy of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode, UpstreamMode

from addon import objectmeta, redirect, replies, s3
from addon.decision import METADATA_KEY, RECORDED_KEY, Decision, Stats, add_debug_header, annotate, set_aside_recorded
from addon.explain import explain
from addon.ledger import Ledger
from addon.delivery import collect
from addon.mirror import Mirror, Rerouted
from addon.missserver import MissServer
from addon.origin import OriginClient, OriginRequest, Timeouts, UnsafeKey, build_request
from addon.rules import DEFAULT_MAX_RULES, LOOP_HEADER, MAX_RULES_CEILING, RoutingRule, RuleBook, RulesError, load_rules
from addon.storeprobe import StoreAnswer, StoreProbe, store_has
from addon.writeback import WriteBack

logger = logging.getLogger(__name__)
# mitmproxy sets the root logger to DEBUG and turns every record into an event on its loop:
# the HTTP and AWS libraries' dozens of DEBUG records per request would cost more than the work
for library in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3"):
    logging.getLogger(library).setLevel(logging.WARNING)


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_TIMEOUT_OPTIONS = {
    "backorigin_origin_connect_timeout": "connect",
    "backorigin_origin_read_timeout": "read",
    "backorigin_origin_timeout": "total",
    "backorigin_copy_timeout": "copy",
}
DEFERRED_RETRY_EVERY = 30.0  # seconds between retries of write-backs the store refused for now
RULES_CHECK_EVERY = 1.0  # seconds between looks at the rules file's modification time


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


def modified_at(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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


class BackOrigin:
    def __init__(self) -> None:
        self.rulebook = RuleBook(source="", buckets={})
        self._rules_mtime = 0.0
        self.origin = OriginClient(Timeouts(), max_inline=64 * 1024**2)
        self.mirror: Mirror | None = None  # needs the spool directory: made in configure
        self.stats = Stats()
        self.ledger: Ledger | None = None
        self._timers: set[asyncio.Task] = set()
        # option values the hooks read, copied in configure()
        self._vhost_domains: tuple[str, ...] = ()
        self._dry_run = False
        self._mirror_heads = True
        self.probe: StoreProbe | None = None  # made in configure, from mitmproxy's upstream TLS options
        self.server = MissServer()
        self.misses: dict[str, Rerouted] = {}  # flow id -> its miss, while the miss server answers it
        self._s3_endpoint: str | None = None
        self._debug_header = False
        self._403_is_miss = False

    def load(self, loader) -> None:
        loader.add_option("backorigin_rules", str, "rules.json", "Path of the rules file (OSS RoutingRule names, JSON); reloaded when it changes.")
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
            "Largest miss answered only once its whole body has arrived and been checked (with its ETag; a broken "
            "origin gets 424). Larger GETs are streamed as the body arrives (no ETag in that first answer; a broken "
            "origin resets the connection). Memory stays bounded either way: bodies go through the spool.",
        )
        loader.add_option("backorigin_copy_timeout", str, "3600", "Seconds the fetch of a body over backorigin_max_inline may take.")
        loader.add_option(
            "backorigin_head_on_miss", str, "object",
            "HEAD of a missing object: 'object' answers it as the object will answer (it is fetched and stored), "
            "for S3 tools that HEAD before they GET; 'oss' answers 404 unless the rule has MirrorAllowHeadObject.",
        )
        loader.add_option(
            "backorigin_spool_fsync", bool, False,
            "fsync a mirrored body and its manifest before the last byte of its answer goes out (survives power "
            "loss); off: they are in the page cache by then (survives a crash of the proxy, kill -9 included).",
        )
        loader.add_option(
            "backorigin_s3_endpoint", Optional[str], None,
            "Endpoint for write-backs (e.g. http://127.0.0.1:8333). Default: the scheme, host and port that answered.",
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
        loader.add_option(
            "backorigin_vhost_domains", Sequence[str], [],
            "Domains of virtual-hosted-style requests (bucket.DOMAIN/key). In reverse mode they need keep_host_header.",
        )
        loader.add_option(
            "backorigin_403_is_miss", bool, False,
            "Treat a GET's 403 AccessDenied as a miss once a HEAD with the proxy's own credentials finds no object "
            "(stores answer 403 instead of 404 to callers without ListBucket).",
        )
        loader.add_option("backorigin_dry_run", bool, False, "Decide and annotate only: never contact the origin, never store.")
        loader.add_option("backorigin_debug_header", bool, False, "Add an x-backorigin header with the decision to answers.")
        loader.add_option("backorigin_ledger", Optional[str], None, "Append every matched miss to this JSON-lines file.")

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        if "backorigin_max_rules" in updated and not 1 <= options.backorigin_max_rules <= MAX_RULES_CEILING:
            raise exceptions.OptionsError(
                f"backorigin_max_rules: {options.backorigin_max_rules} is outside 1..{MAX_RULES_CEILING}"
            )
        if {"backorigin_rules", "backorigin_max_rules"} & updated:
            try:
                self._load_rules()
            except RulesError as e:
                raise exceptions.OptionsError(str(e)) from None
        if set(_TIMEOUT_OPTIONS) & updated:
            self.origin.timeouts = Timeouts(
                **{field: parse_seconds(name, getattr(options, name)) for name, field in _TIMEOUT_OPTIONS.items()}
            )
        if "backorigin_max_inline" in updated:
            self.origin.max_inline = parse_size("backorigin_max_inline", options.backorigin_max_inline)
        if "backorigin_shutdown_timeout" in updated:
            parse_seconds("backorigin_shutdown_timeout", options.backorigin_shutdown_timeout)
        if "backorigin_head_on_miss" in updated and options.backorigin_head_on_miss not in ("object", "oss"):
            raise exceptions.OptionsError(
                f"backorigin_head_on_miss: {options.backorigin_head_on_miss!r} is neither 'object' nor 'oss'"
            )
        for name in ("backorigin_writeback_workers", "backorigin_writeback_queue"):
            if name in updated and getattr(options, name) < 1:
                raise exceptions.OptionsError(f"{name}: must be at least 1")
        if "backorigin_ledger" in updated:
            self.ledger = Ledger(Path(options.backorigin_ledger).expanduser()) if options.backorigin_ledger else None
        # read once here, not per flow: an option read copies its value every time
        self._vhost_domains = tuple(options.backorigin_vhost_domains)
        self._dry_run = options.backorigin_dry_run
        self._mirror_heads = options.backorigin_head_on_miss == "object"
        self._s3_endpoint = options.backorigin_s3_endpoint
        self._debug_header = options.backorigin_debug_header
        self._403_is_miss = options.backorigin_403_is_miss
        if self.mirror is None or {"backorigin_spool_dir", "confdir"} & updated:
            spool = Path(options.backorigin_spool_dir or Path(options.confdir).expanduser() / "backorigin-spool")
            if self.mirror is not None and self.mirror.writeback.spool.directory != spool:
                raise exceptions.OptionsError("backorigin_spool_dir: cannot change while running; restart instead")
            writeback = WriteBack(spool, options.backorigin_writeback_workers, options.backorigin_writeback_queue,
                                  fsync=options.backorigin_spool_fsync)
            self.mirror = Mirror(self.origin, writeback, fsync=options.backorigin_spool_fsync)
        if "backorigin_spool_fsync" in updated:
            self.mirror.fsync = self.mirror.writeback.spool.fsync = options.backorigin_spool_fsync
        if self.probe is None or {"ssl_insecure", "ssl_verify_upstream_trusted_ca"} & updated:
            self.probe = StoreProbe(upstream_verification(options))

    def _load_rules(self) -> None:
        path = Path(ctx.options.backorigin_rules)
        self.rulebook = load_rules(path, ctx.options.backorigin_max_rules)
        self._rules_mtime = modified_at(path)
        logger.info(
            "%s: rules for %d bucket(s): %s",
            self.rulebook.source, len(self.rulebook.buckets), ", ".join(self.rulebook.buckets) or "none",
        )

    def running(self) -> None:
        """Resume what a previous run left spooled; from now on, retry deferred write-backs
        and reload the rules file when it changes."""
        self.mirror.resume(ctx.options.backorigin_s3_endpoint)
        for timer in (self._retry_deferred_forever(), self._watch_rules_forever()):
            task = asyncio.ensure_future(timer)
            self._timers.add(task)

    async def _retry_deferred_forever(self) -> None:
        while True:
            await asyncio.sleep(DEFERRED_RETRY_EVERY)
            if count := self.mirror.writeback.retry_deferred():
                logger.info("retrying %d deferred write-back(s)", count)

    async def _watch_rules_forever(self) -> None:
        while True:
            await asyncio.sleep(RULES_CHECK_EVERY)
            modified = modified_at(Path(ctx.options.backorigin_rules))
            if modified and modified != self._rules_mtime:  # 0.0: being replaced; look again next time
                self.reload()

    # hooks -----------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        """Refuse our own origin fetches coming back in (a loop); let redirect rules without
        a status condition decide before the store is asked (OSS: "hide objects with a
        prefix"), unless an earlier rule needs the store's answer; and ask the store about
        GETs and HEADs that a rule may mirror, so that a miss is answered by streaming."""
        if flow.live and LOOP_HEADER in flow.request.headers and flow.response is None:
            logger.warning(
                "loop: %s came back into the proxy from our own origin fetch; a MirrorURL points at a "
                "domain that now resolves to this proxy or the store. Use the origin's IP address or "
                "another domain for it (with MirrorHost for the Host header).", flow.request.pretty_url,
            )
            ref = self._object(flow) or s3.ObjectRef("", "")
            flow.response = replies.to_response(flow.request, replies.mirror_failed(ref, "loop: the origin URL leads back into the proxy"))
            self._record(flow, Decision(ref.bucket, ref.key, "loop", outcome="loop"))
            return
        if not flow.live:
            set_aside_recorded(flow)
        ref = self._candidate(flow)
        if ref is None:
            return
        rule = self.rulebook.first_request_match(ref.bucket, ref.key, flow.request.method, flow.request.headers.get,
                                                 self._mirror_heads)
        if rule is None:
            return
        if rule.status_condition is None:
            self._redirect(flow, ref, rule)
        elif self._acts(flow) and flow.response is None:
            await self._ask_store_first(flow, ref)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        rerouted = self.misses.get(flow.id)
        if rerouted is not None and flow.response is not None:
            flow.response.stream = True  # the miss server's answer, streamed with backpressure
            if self._debug_header:  # now or never: a streamed answer's headers go out next
                add_debug_header(flow.response, rerouted.miss.decision())

    def error(self, flow: http.HTTPFlow) -> None:
        if miss := self.misses.pop(flow.id, None):
            self.server.withdraw(miss.ticket)  # unused when the client left before mitmproxy came to it
            flow.request = miss.client_request
            self._record(flow, miss.miss.decision("broken", str(flow.error)))

    async def response(self, flow: http.HTTPFlow) -> None:
        if miss := self.misses.pop(flow.id, None):
            flow.request = miss.client_request  # recordings and the UI show what the client asked
            self._record(flow, miss.miss.decision(), header=False)  # responseheaders added it
            return
        ref = self._candidate(flow)
        if ref is None or flow.response is None or (self._acts(flow) and flow.metadata.get(METADATA_KEY)):
            return
        status = await self._store_status(flow, ref)
        if status is None:
            return
        rule = self.rulebook.decide_after_store(ref.bucket, ref.key, flow.request.method, flow.request.headers.get, status,
                                                self._mirror_heads)
        if rule is None:
            if 200 <= status < 300:
                objectmeta.restore_on_download(flow.response)
        elif not rule.Redirect.is_mirror:
            self._redirect(flow, ref, rule, store_status=status)
        elif status == 404:
            await self._answer_late_miss(flow, ref, rule)

    # the miss path ---------------------------------------------------------------------------

    async def _ask_store_first(self, flow: http.HTTPFlow, ref: s3.ObjectRef) -> None:
        """Send the client's request to the store ourselves; on a miss that a rule mirrors,
        re-route the flow to the miss server (or answer a redirect rule right here)."""
        endpoint = self._endpoint(flow.request)
        known = (endpoint, ref.bucket, ref.key)
        if known in self.mirror.known:
            return
        assert self.probe is not None
        answer = await self.probe.ask(flow.request, upstream_proxy(flow))
        if answer is None:
            return
        if 200 <= answer.status < 300 or answer.status in (304, 412, 416):
            self.mirror.known.add(known)
            return
        status = s3.rules_status(flow.request.method, answer.status, answer.body)
        if status == 403 and self._403_is_miss and s3.error_code_of(answer.body) == "AccessDenied":
            status = await self._403_status(endpoint, ref)
        if status is None or known in self.mirror.known:  # stored while we asked: the store answers
            return
        rule = self.rulebook.decide_after_store(ref.bucket, ref.key, flow.request.method, flow.request.headers.get,
                                                status, self._mirror_heads)
        if rule is None:
            return
        if not rule.Redirect.is_mirror:
            self._redirect(flow, ref, rule, store_status=status)
            return
        store_404 = answer if answer.status == 404 else StoreAnswer(404, (), b"")
        await self._reroute_miss(flow, ref, rule, endpoint, store_404)

    async def _reroute_miss(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule, endpoint: str,
                            store_404: StoreAnswer) -> None:
        origin_request = self._origin_request(flow, ref, rule)
        if origin_request is None:
            return  # the store answers its own 404
        await self.server.ensure_started()
        miss = self.mirror.start(endpoint, ref, rule, origin_request)
        client_request = flow.request.copy()
        store_404 = store_404 if store_404.body else StoreAnswer.of(replies.no_such_key(ref))
        path = self.server.issue(
            lambda: self.mirror.reply(miss, client_request.method, client_request.headers.get, store_404)
        )
        self.misses[flow.id] = Rerouted(miss, client_request, path)
        flow.request.scheme, flow.request.host, flow.request.port, flow.request.path = "http", "127.0.0.1", self.server.port, path
        flow.server_conn.via = None  # in upstream mode too, the miss server is reached directly

    async def _answer_late_miss(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule) -> None:
        """A 404 that the request hook did not see coming (a replay, a dry run, an object
        deleted from the store behind our back, a store that could not be asked). Live flows
        are answered from the same fill, from memory up to backorigin_max_inline; a larger
        object gets 503 SlowDown, which S3 clients retry, and the retry streams it."""
        origin_request = self._origin_request(flow, ref, rule)
        if origin_request is None:
            return
        if not self._acts(flow):
            self._record(flow, Decision(ref.bucket, ref.key, "mirror", rule.RuleNumber, origin_url=origin_request.url,
                                        store_status=404))
            return
        endpoint = self._endpoint(flow.request)
        self.mirror.known.discard((endpoint, ref.bucket, ref.key))
        miss = self.mirror.start(endpoint, ref, rule, origin_request)
        store_404 = StoreAnswer(404, tuple(flow.response.headers.items(multi=True)), flow.response.raw_content or b"")
        reply = await self.mirror.reply(miss, flow.request.method, flow.request.headers.get, store_404)
        if reply.stream is not None:
            reply = await collect(reply, self.origin.max_inline) or replies.slow_down(ref)
        flow.response = replies.to_response(flow.request, reply)
        self._record(flow, miss.decision())

    def _origin_request(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule) -> OriginRequest | None:
        """What to ask the origin; None (decided and logged) for a key that cannot be mirrored."""
        try:
            return build_request(rule, ref.key, flow.request)
        except UnsafeKey as e:
            logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, rule.RuleNumber, e)
            self._record(flow, Decision(ref.bucket, ref.key, "mirror", rule.RuleNumber, "unsafe-key", detail=str(e),
                                        store_status=404))
            return None

    async def _store_status(self, flow: http.HTTPFlow, ref: s3.ObjectRef) -> int | None:
        """The store's status as the rules see it (see s3.rules_status); with
        backorigin_403_is_miss a 403 counts as 404 once the proxy's own HEAD finds no object.
        A replayed flow that the recording answered itself carries the store's status in its
        recorded decision. None: no rule may act on the answer."""
        recorded = flow.metadata.get(RECORDED_KEY) if not flow.live else None
        if recorded:  # a mirror only ever acted on a 404 (recordings before store_status say no more)
            recorded_status = recorded.get("store_status") or (404 if recorded.get("action") == "mirror" else None)
            if recorded_status:
                return recorded_status
        response = flow.response
        unrecorded = flow.is_replay == "response" and not response.raw_content
        status = s3.rules_status(flow.request.method, response.status_code, response.get_content(strict=False) or b"",
                                 unrecorded_replay=unrecorded)
        if status == 403 and self._403_is_miss and s3.error_code(response) == "AccessDenied":
            if not self._acts(flow):
                return 404  # a replay cannot ask the store; it assumes the object was missing
            return await self._403_status(self._endpoint(flow.request), ref)
        return status

    async def _403_status(self, endpoint: str, ref: s3.ObjectRef) -> int:
        """403 AccessDenied counts as a miss once the proxy's own HEAD finds no object; a
        store that cannot say keeps its 403."""
        try:
            present = await asyncio.to_thread(store_has, self.mirror.writeback.client(endpoint), ref.bucket, ref.key)
        except Exception as e:
            logger.warning("cannot ask the store about s3://%s/%s: %s", ref.bucket, ref.key, e)
            return 403
        return 403 if present else 404

    # the pieces ------------------------------------------------------------------------------

    def _object(self, flow: http.HTTPFlow) -> s3.ObjectRef | None:
        return s3.object_ref(flow.request, self._vhost_domains)

    def _candidate(self, flow: http.HTTPFlow) -> s3.ObjectRef | None:
        """The object a GET/HEAD names, if its bucket has rules."""
        if flow.request.method not in ("GET", "HEAD") or not s3.is_plain_object_call(flow.request):
            return None
        ref = self._object(flow)
        return ref if ref is not None and self.rulebook.rules_for(ref.bucket) else None

    def _acts(self, flow: http.HTTPFlow) -> bool:
        """Live flows outside a dry run act; replayed flows and dry runs only decide."""
        return flow.live and not self._dry_run

    def _endpoint(self, request: http.Request) -> str:
        return self._s3_endpoint or store_endpoint(request, self._vhost_domains)

    def _redirect(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule, store_status: int | None = None) -> None:
        scheme, host = client_facing(flow)
        target = redirect.location(rule, ref, flow.request, scheme, host)
        decision = Decision(ref.bucket, ref.key, rule.Redirect.RedirectType.lower(), rule.RuleNumber, "redirected",
                            location=target, store_status=store_status)
        if self._acts(flow):
            logger.info("bucket %s, RuleNumber %d: %s %s -> %s", ref.bucket, rule.RuleNumber, rule.Redirect.RedirectType, ref.key, target)
            flow.response = replies.to_response(
                flow.request, replies.redirect(rule.Redirect.HttpRedirectCode, target, redirect.extra_headers(rule))
            )
        self._record(flow, decision)

    def _record(self, flow: http.HTTPFlow, decision: Decision, header: bool = True) -> None:
        if not self._acts(flow) and decision.action != "loop":
            decision = replace(decision, outcome="dry-run" if flow.live else "replayed")
        annotate(flow, decision, header and self._debug_header)
        self.stats.record(decision)
        if self.ledger is not None and decision.action == "mirror":
            self.ledger.append(decision)

    # commands --------------------------------------------------------------------------------

    @command.command("backorigin.explain")
    def explain(self, url: str) -> str:
        """Which rule would act on URL, and the origin URL or Location it would build (nothing is fetched)."""
        return explain(self.rulebook, url, self._vhost_domains)

    @command.command("backorigin.reload")
    def reload(self) -> None:
        """Read the rules file again; a bad file keeps the rules in force and logs why."""
        try:
            self._load_rules()
        except RulesError as e:
            self._rules_mtime = modified_at(Path(ctx.options.backorigin_rules))  # report a bad edit once
            logger.error("rules not reloaded, the previous rules stay in force:\n%s", e)

    @command.command("backorigin.stats")
    def show_stats(self) -> str:
        """Counters: decisions, outcomes, bytes from origins, write-backs pending and done."""
        writeback = self.mirror.writeback
        counts = {**self.stats.counts, **{f"writebacks.{k}": v for k, v in writeback.outcomes.items()}}
        counts["writebacks.pending"] = writeback.pending
        return json.dumps(dict(sorted(counts.items())), indent=1)

    @command.command("backorigin.pending")
    def pending(self) -> Sequence[str]:
        """Write-backs waiting in the spool (s3://bucket/key, bytes)."""
        return [f"{upload.where} ({upload.size} bytes)" for _, upload in self.mirror.writeback.spool.pending()]

    def done(self) -> asyncio.Task[None]:
        # Synchronous on purpose: mitmproxy calls done() synchronously on script reload,
        # so an async def would silently never run there. The returned task is awaited
        # by mitmdump at shutdown.
        for timer in self._timers:
            timer.cancel()
        timeout = parse_seconds("backorigin_shutdown_timeout", ctx.options.backorigin_shutdown_timeout)
        return asyncio.ensure_future(self._shutdown(timeout))

    async def _shutdown(self, timeout: float) -> None:
        await self.server.stop()
        if self.probe is not None:
            await self.probe.aclose()
        await self.mirror.shutdown(timeout)


def upstream_verification(options) -> bool | str:
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


addons = [BackOrigin()]
