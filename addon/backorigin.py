"""backorigin: OSS-style mirror back-to-origin for any S3-compatible store.

Run it as:  mitmdump -s addon/backorigin.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

The addon only wires the modules: s3 (which object), rules (which rule), redirect
(Location), mirror (fetch, answer, store), decision (what happened, for people and
tools). It holds no policy of its own: options, hooks and commands only.
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
from mitmproxy.proxy.mode_specs import ReverseMode

from addon import objectmeta, redirect, replies, s3
from addon.decision import METADATA_KEY, RECORDED_KEY, Decision, Stats, annotate, set_aside_recorded
from addon.explain import explain
from addon.ledger import Ledger
from addon.mirror import Mirror
from addon.origin import OriginClient, Timeouts
from addon.rules import DEFAULT_MAX_RULES, LOOP_HEADER, MAX_RULES_CEILING, RoutingRule, RuleBook, RulesError, load_rules
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
        self._streams_large = False
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
            "Largest origin body answered from memory; past it see backorigin_large_objects.",
        )
        loader.add_option(
            "backorigin_large_objects", str, "redirect",
            "How misses are answered past backorigin_max_inline: 'redirect' (302 to the origin, copy in the "
            "background; for browsers and CDNs) or 'stream' (ask the store first, then stream every miss from "
            "the origin through the proxy; also for SDK clients that do not follow redirects).",
        )
        loader.add_option("backorigin_copy_timeout", str, "3600", "Seconds a background copy of a large object may take.")
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
        if "backorigin_large_objects" in updated and options.backorigin_large_objects not in ("redirect", "stream"):
            raise exceptions.OptionsError(
                f"backorigin_large_objects: {options.backorigin_large_objects!r} is neither 'redirect' nor 'stream'"
            )
        for name in ("backorigin_writeback_workers", "backorigin_writeback_queue"):
            if name in updated and getattr(options, name) < 1:
                raise exceptions.OptionsError(f"{name}: must be at least 1")
        if "backorigin_ledger" in updated:
            self.ledger = Ledger(Path(options.backorigin_ledger).expanduser()) if options.backorigin_ledger else None
        # read once here, not per flow: an option read copies its value every time
        self._vhost_domains = tuple(options.backorigin_vhost_domains)
        self._dry_run = options.backorigin_dry_run
        self._streams_large = options.backorigin_large_objects == "stream"
        self._s3_endpoint = options.backorigin_s3_endpoint
        self._debug_header = options.backorigin_debug_header
        self._403_is_miss = options.backorigin_403_is_miss
        if self.mirror is None or {"backorigin_spool_dir", "confdir"} & updated:
            spool = Path(options.backorigin_spool_dir or Path(options.confdir).expanduser() / "backorigin-spool")
            if self.mirror is not None and self.mirror.writeback.spool.directory != spool:
                raise exceptions.OptionsError("backorigin_spool_dir: cannot change while running; restart instead")
            writeback = WriteBack(spool, options.backorigin_writeback_workers, options.backorigin_writeback_queue)
            self.mirror = Mirror(self.origin, writeback)

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
        self.mirror.writeback.resume(ctx.options.backorigin_s3_endpoint)
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
        """Refuse our own origin fetches coming back in (a loop), then let redirect rules
        without a status condition decide before the store is asked (OSS: "hide objects
        with a prefix"), unless an earlier rule needs the store's answer."""
        if flow.live and LOOP_HEADER in flow.request.headers and flow.response is None:
            logger.warning(
                "loop: %s came back into the proxy from our own origin fetch; a MirrorURL points at a "
                "domain that now resolves to this proxy or the store. Use the origin's IP address or "
                "another domain for it (with MirrorHost for the Host header).", flow.request.pretty_url,
            )
            ref = self._object(flow) or s3.ObjectRef("", "")
            flow.response = replies.mirror_failed(flow.request, ref, "loop: the origin URL leads back into the proxy")
            self._record(flow, Decision(ref.bucket, ref.key, "loop", outcome="loop"))
            return
        if not flow.live:
            set_aside_recorded(flow)
        ref = self._candidate(flow)
        if ref is None:
            return
        rule = self.rulebook.first_request_match(ref.bucket, ref.key, flow.request.method, flow.request.headers.get)
        if rule is None:
            return
        if rule.status_condition is None:
            self._redirect(flow, ref, rule)
        elif rule.Redirect.is_mirror and flow.request.method == "GET" and self._acts(flow) and self._streams_large:
            await self.mirror.stream_if_missing(flow, ref, rule, self._endpoint(flow.request))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.mirror.stream_headers(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if decision := self.mirror.stream_broke(flow):
            self._record(flow, decision)

    async def response(self, flow: http.HTTPFlow) -> None:
        if decision := await self.mirror.finish_stream(flow):
            self._record(flow, decision)
            return
        ref = self._candidate(flow)
        if ref is None or flow.response is None or (self._acts(flow) and flow.metadata.get(METADATA_KEY)):
            return
        status = await self._store_status(flow, ref)
        if status is None:
            return
        rule = self.rulebook.decide_after_store(ref.bucket, ref.key, flow.request.method, flow.request.headers.get, status)
        if rule is None:
            if 200 <= status < 300:
                objectmeta.restore_on_download(flow.response)
        elif not rule.Redirect.is_mirror:
            self._redirect(flow, ref, rule, store_status=status)
        elif status == 404:
            store_404 = flow.response if flow.response.status_code == 404 else replies.no_such_key(flow.request, ref)
            answer, decision = await self.mirror.answer(
                flow.request, store_404, ref, rule, self._endpoint(flow.request), side_effects=self._acts(flow)
            )
            if self._acts(flow):
                flow.response = answer
            self._record(flow, replace(decision, store_status=404))

    async def _store_status(self, flow: http.HTTPFlow, ref: s3.ObjectRef) -> int | None:
        """The store's status as the rules see it: a GET's 404 counts only as NoSuchKey (HEAD
        has no body to tell; nor has the empty 404 of `--server-replay` for an unrecorded
        request); with backorigin_403_is_miss a 403 counts as 404 once the proxy's own HEAD
        finds no object. A replayed flow that the recording answered itself carries the
        store's status in its recorded decision. None: no rule may act on the answer."""
        recorded = flow.metadata.get(RECORDED_KEY) if not flow.live else None
        if recorded:  # a mirror only ever acted on a 404 (recordings before store_status say no more)
            recorded_status = recorded.get("store_status") or (404 if recorded.get("action") == "mirror" else None)
            if recorded_status:
                return recorded_status
        status = flow.response.status_code
        is_get = flow.request.method == "GET"
        unrecorded = flow.is_replay == "response" and not flow.response.raw_content
        if status == 404 and is_get and not s3.is_no_such_key(flow.response) and not unrecorded:
            return None
        if status == 403 and is_get and self._403_is_miss and s3.error_code(flow.response) == "AccessDenied":
            if not self._acts(flow):
                return 404  # a replay cannot ask the store; it assumes the object was missing
            present = await self.mirror.store_has(self._endpoint(flow.request), ref)
            return 404 if present is False else 403  # a store that cannot say keeps its 403
        return status

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
            flow.response = replies.redirect(flow.request, rule.Redirect.HttpRedirectCode, target, redirect.extra_headers(rule))
        self._record(flow, decision)

    def _record(self, flow: http.HTTPFlow, decision: Decision) -> None:
        if not self._acts(flow) and decision.action != "loop":
            decision = replace(decision, outcome="dry-run" if flow.live else "replayed")
        annotate(flow, decision, self._debug_header)
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
        return asyncio.ensure_future(self.mirror.shutdown(timeout))


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
