"""backorigin: OSS-style mirror and redirect back-to-origin for any S3-compatible store.

Loaded by mitmproxy from addon/script.py:
    mitmdump -s addon/script.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

`BackOrigin` holds rules -> decision -> act for GETs and HEADs of objects: which object
(s3.addressing), what it gets (decider, the one place that decides, with rules.plan.plan_get),
asking the store first (miss.probe), then a redirect (rules.targets), or a mirror (miss.mirror,
answered by miss.delivery); its request and response hooks only adapt the flow to it. Each other
concern is a child addon with its own options: the rules file, the mirror machinery and its spool,
deletes, write-through, the merged listing, metrics, the ledger, commands and the mitmweb view.
This addon alone has the per-request hooks: each reads the method first and hands the flow to the
child whose kind it is (deletes and write-through for writes, the listing for a bucket's GET, the
miss delivery for the flows it answers), so a GET of an object costs one addon's hook functions,
each returning at its first check when no rule covers the key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from backorigin.backoriginsettings import BackOriginSettings
from backorigin.context import Context
from backorigin.decider import Decided, Decider, settled
from backorigin.decision import METADATA_KEY, Action, Decision, Outcome, Recorder, set_aside_recorded
from backorigin.deletes.deletes import Deletes
from backorigin.limits import STREAM_LARGE_BODIES
from backorigin.listing.hiding import hide_in_force
from backorigin.listing.mergedlisting import MergedListing
from backorigin.miss import objectmeta
from backorigin.miss.delivery import MissDelivery
from backorigin.miss.fleetleases import FleetLeases
from backorigin.miss.mirroring import Mirroring
from backorigin.miss.originprotection import OriginProtection
from backorigin.miss.probe import StoreProbe, answer_from_store
from backorigin.options import GivenOnce, declare, read_settings
from backorigin.parts import Parts
from backorigin.rules import plan
from backorigin.rules.model import LOOP_HEADER, RuleBook, RulesError
from backorigin.rules.plan import Act, GetPlan
from backorigin.rules.rulesfile import RulesFile
from backorigin.rules.targets import extra_headers, location
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectRef, is_plain_object_call, is_signed
from backorigin.s3.storeclient import StoreAnswer, client_facing, upstream_proxy, upstream_verification
from backorigin.s3.storeservername import StoreServerName
from backorigin.stores import SetAsideLog, Stores
from backorigin.ui.commands import Commands
from backorigin.ui.decisionview import DecisionView
from backorigin.ui.ledger import Ledger
from backorigin.ui.metrics import AddonState, MetricsEndpoint
from backorigin.writethrough.writethrough import WriteThrough

logger = logging.getLogger(__name__)
READS = ("GET", "HEAD")
# mitmproxy sets the root logger to DEBUG and turns every record into an event on its loop:
# the HTTP and AWS libraries' dozens of DEBUG records per request would cost more than the work
for library in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3"):
    logging.getLogger(library).setLevel(logging.WARNING)


class BackOrigin:
    def __init__(self) -> None:
        """The shared parts first (backorigin.parts), then each child with what it uses, in the
        order mitmproxy calls them."""
        self.settings = BackOriginSettings()
        self.rules_file = RulesFile(check=self._check_rules)
        set_aside = SetAsideLog()
        self.context = Context(self.rules_file, set_aside=set_aside.note)
        self.parts = parts = Parts.build(own_listeners=self._own_listeners)
        self.mirror = parts.mirror
        ledger = Ledger(tombstones_at=lambda: parts.tombstones.location)
        self.recorder = Recorder(explain=self._rules_tried, listeners=[ledger.append])
        self.probe = StoreProbe()
        self.delivery = MissDelivery(self.recorder, self.context.endpoint)
        self.deletes = Deletes(self.context, parts.mirror, parts.tombstones, self.delivery.refuse)
        self.writethrough = WriteThrough(self.context, parts.writeback, synced=parts.measures.synced)
        self.decider = Decider(self.context, self.writethrough.writing, self.deletes.is_deleted)
        self.listing = MergedListing(self.context, hide_in_force(parts.tombstones), leases_under=parts.leases.prefix_in)
        self.metrics = MetricsEndpoint(
            parts.measures, AddonState(self.recorder.stats, parts.writeback, parts.tombstones.count, parts.guard, parts.leases,
                                       set_aside.counts),
            writethrough=lambda: self.writethrough.supervisor)
        self.mirroring = Mirroring(parts.mirror)
        self.addons = [self.rules_file, Stores(self.context), self.mirroring, OriginProtection(parts.guard),
                       FleetLeases(parts.leases), self.deletes, self.writethrough, self.listing, self.metrics,
                       ledger, DecisionView(), StoreServerName(),
                       Commands(self.context, self.recorder.stats, parts.writeback, parts.tombstones), GivenOnce()]

    def load(self, loader: Loader) -> None:
        declare(BackOriginSettings, loader)

    def configure(self, updated: set[str]) -> None:
        options = ctx.options  # read once here, not per flow: an option read copies its value every time
        self.settings = settings = read_settings(BackOriginSettings, options)
        self.context.dry_run, self.recorder.debug_header = settings.dry_run, settings.debug_header
        self.decider.mirror_heads = settings.head_on_miss == "object"
        self.decider.denied_is_miss = settings.denied_is_miss
        try:
            self._check_rules(self.context.rulebook)
        except RulesError as e:
            raise exceptions.OptionsError(str(e)) from None
        if {"ssl_insecure", "ssl_verify_upstream_trusted_ca"} & updated:
            self.probe.client.verify = upstream_verification(options)

    def _check_rules(self, book: RuleBook) -> None:
        """What this addon's options require of the rules (the rules file checks each new book with it)."""
        if self.decider.denied_is_miss and not self.settings.private_origins:
            plan.refuse_private_origins(book)

    def _rules_tried(self, flow: http.HTTPFlow, decided: Decision) -> list[str]:
        """The mitmweb view's "rules tried" before a decision's rule."""
        return plan.rules_tried(self.context.rulebook, ObjectRef(decided.bucket, decided.key), flow.request,
                                decided.store_status, self.decider.mirror_heads)

    def _own_listeners(self) -> list[tuple[str, int]]:
        return own_listeners(self.metrics, self.delivery)

    # hooks -----------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Every live request is read once, as sent to the store (s3.reading); one set aside is counted.
        A write's body may be read on its way (a DeleteObjects' keys: deletes, write-through)."""
        if flow.live:
            self.context.read(flow)
        if flow.request.method in READS:
            return None
        return in_order(partial(self.deletes.on_requestheaders, flow), partial(self.writethrough.on_requestheaders, flow))

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Refuse our own origin fetches coming back in (a loop); let redirect rules without a
        status condition decide before the store is asked (OSS: "hide objects with a prefix"),
        unless an earlier rule needs the store's answer; and ask the store about GETs and HEADs
        that a rule may mirror, so that a miss is decided here and its answer can stream. Only
        that asking is awaited: every other request costs no coroutine."""
        if flow.request.method not in READS:
            return self.deletes.on_request(flow)
        if flow.live and flow.response is None and self.mirror.origin.marker.came_back(flow.request.headers.get_all(LOOP_HEADER)):
            self._record(flow, refuse_loop(flow, self.context.object(flow) or ObjectRef("", "")))
            return None
        if not flow.live:
            set_aside_recorded(flow)
        if self.deletes.undoing:  # a key whose write-back is being undone reads as deleted (deletes.undoing)
            self.deletes.undoing.hide(flow, self.context)
            if flow.response is not None:
                return None
        ref = self._candidate(flow)
        if ref is None:  # a bucket's listing may be merged (listing.mergedlisting)
            return self.listing.on_request(flow) if self.context.bucket(flow) else None
        before = self.decider.before_store(flow, ref)
        if before.act is Act.REDIRECT:
            self._redirect(flow, ref, before)
        elif before.act is Act.ASK_STORE and self.context.acts(flow) and flow.response is None:
            return self._ask_store_first(flow, ref)
        return None

    def running(self) -> None:
        """Bodies of any size pass through at bounded memory: mitmproxy streams those above
        stream_large_bodies (hits, PUTs, parts), unless the user chose otherwise."""
        if "stream_large_bodies" in ctx.options and ctx.options.stream_large_bodies is None:
            ctx.options.update(stream_large_bodies=STREAM_LARGE_BODIES)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """An object a mirror stored shows its metadata (x-oss-tag, Last-Modified...), set before
        its headers go out (a streamed body's response hook comes after them)."""
        if self.delivery.owns(flow):
            self.delivery.responseheaders(flow)
            return
        response = flow.response
        if flow.request.method not in READS:
            self.deletes.on_responseheaders(flow)
            self.writethrough.on_responseheaders(flow)
        elif (response is not None and 200 <= response.status_code < 300 and not flow.metadata.get(METADATA_KEY)
                and self.context.object(flow)):
            objectmeta.restore_on_download(response)  # an object of a named store (a request set aside stays untouched)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Hits (counted, without a coroutine), and 404s the request hook did not see coming (a
        replay, a dry run, an object deleted from the store behind our back, a store that could not
        be asked)."""
        if self.delivery.owns(flow):
            self.delivery.response(flow)
            return None
        if flow.request.method not in READS:  # writes and deletes: what the store did
            return in_order(partial(self.deletes.on_response, flow), partial(self.writethrough.on_response, flow))
        response = flow.response
        if response is None or (self.context.acts(flow) and flow.metadata.get(METADATA_KEY)):
            return None
        ref = self._candidate(flow)
        if ref is None:  # a listing right after a failed HEAD of its folder's name (miss.failedheads)
            self.delivery.failed_heads.on_listing(flow, self.context.bucket(flow))
            return None
        status = response.status_code
        body = (response.get_content(strict=False) or b"") if status in (403, 404) else b""
        decided = self.decider.after_store(flow, ref, status, body, lambda: tuple(response.headers.items(multi=True)),
                                           unrecorded_replay=flow.is_replay == "response" and not response.raw_content)
        if isinstance(decided, Decided):
            return self._act_after_store(flow, response, ref, decided)
        return self._act_once_decided(flow, response, ref, decided)

    async def _act_once_decided(self, flow: http.HTTPFlow, response: http.Response, ref: ObjectRef,
                                decided: Awaitable[Decided]) -> None:
        if (acting := self._act_after_store(flow, response, ref, await decided)) is not None:
            await acting

    def _act_after_store(self, flow: http.HTTPFlow, response: http.Response, ref: ObjectRef,
                         decided: Decided) -> Awaitable[None] | None:
        """The store's answer went through mitmproxy: it stands (a hit is counted here, the one
        place), or a rule redirects, or a mirror answers instead (miss.delivery's late delivery)."""
        after = decided.plan
        if after.act is Act.STORE:
            if 200 <= response.status_code < 300:
                self.recorder.served_by_store(flow, plan.covering_rule_number(self.context.rulebook, ref))
        elif after.act is Act.MIRROR and self.context.acts(flow):
            return self._mirror_late(flow, response, ref, after)
        else:
            self._act_without_origin(flow, ref, after, decided.status)
        return None

    async def _mirror_late(self, flow: http.HTTPFlow, response: http.Response, ref: ObjectRef, after: GetPlan) -> None:
        endpoint = self.context.endpoint(flow.request)
        assert endpoint is not None  # ref came from the same reading
        self.mirror.known.discard((endpoint, ref.bucket, ref.key))
        miss = await self.mirror.start(endpoint, ref, after.rule, after.origin, is_signed(flow.request))  # type: ignore[arg-type]
        answer = StoreAnswer(response.status_code, tuple(response.headers.items(multi=True)), response.raw_content or b"")
        await self.delivery.deliver_late(flow, self.mirror, miss, answer, ref)

    def error(self, flow: http.HTTPFlow) -> None:
        self.deletes.on_error(flow)
        self.delivery.error(flow)

    def done(self) -> asyncio.Task[None]:
        # Synchronous on purpose: mitmproxy calls done() synchronously on script reload, so an
        # async def would silently never run there. mitmdump awaits the returned task at shutdown.
        self.metrics.close()
        return asyncio.ensure_future(self._shutdown())

    async def _shutdown(self) -> None:
        await self.listing.aclose()
        await self.delivery.aclose()
        await self.probe.aclose()
        await self.mirroring.aclose()

    # the miss path ---------------------------------------------------------------------------

    async def _ask_store_first(self, flow: http.HTTPFlow, ref: ObjectRef) -> None:
        """Send the client's request to the store ourselves; on a miss that a rule mirrors,
        deliver the mirror's answer (or answer a redirect rule right here); otherwise the store's
        answer is the client's (miss.probe), unless it is too large to have been read."""
        mirror = self.mirror
        reading = self.context.read(flow)
        assert reading is not None  # ref came from it
        endpoint = reading.endpoint
        known = (endpoint, ref.bucket, ref.key)
        if known in mirror.known:
            return
        answer = await self.probe.ask(flow.request, reading.host, upstream_proxy(flow))
        if answer is None:
            return
        stored = plan.shows_object(answer.status)
        if stored:
            mirror.known.add(known)
        decided = await settled(self.decider.after_store(flow, ref, answer.status, answer.body, lambda: answer.headers))
        if not stored and known in mirror.known:  # stored while we asked: the store answers again
            return
        after = decided.plan
        if after.act is Act.MIRROR:
            miss = await mirror.start(endpoint, ref, after.rule, after.origin, is_signed(flow.request))  # type: ignore[arg-type]
            if miss is not None:  # None: stored meanwhile (by this proxy or another), the request goes to the store
                await self.delivery.deliver(flow, mirror, miss, answer if answer.status == 404 else StoreAnswer(404, ()))
            return
        if after.act is not Act.REDIRECT:
            answer_from_store(flow, answer)
        self._act_without_origin(flow, ref, after, decided.status)

    def _act_without_origin(self, flow: http.HTTPFlow, ref: ObjectRef, after: GetPlan, status: int | None) -> None:
        """A redirect; a miss not mirrored (the store's 404 stands); a mirror only decided (dry run, replay)."""
        if after.act is Act.REDIRECT:
            self._redirect(flow, ref, after, store_status=status)
        elif after.rule is not None and after.act in (Act.KEEP_404, Act.MIRROR):
            if after.outcome is Outcome.UNSAFE_KEY:
                logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, after.rule.RuleNumber, after.detail)
            origin_url = after.origin.url if after.origin is not None else ""
            self._record(flow, Decision(ref.bucket, ref.key, Action.MIRROR, after.rule.RuleNumber, after.outcome,
                                        origin_url=origin_url, detail=after.detail, store_status=status))

    # the pieces ------------------------------------------------------------------------------

    def _candidate(self, flow: http.HTTPFlow) -> ObjectRef | None:
        """The object a GET/HEAD names, if its bucket has rules."""
        if flow.request.method not in ("GET", "HEAD") or not is_plain_object_call(flow.request):
            return None
        ref = self.context.object(flow)
        return ref if ref is not None and self.context.rulebook.rules_for(ref.bucket) else None

    def _redirect(self, flow: http.HTTPFlow, ref: ObjectRef, decided: GetPlan, store_status: int | None = None) -> None:
        rule = decided.rule
        assert rule is not None
        scheme, host = client_facing(flow)
        target = location(rule, ref, flow.request, scheme, host)
        if self.context.acts(flow):
            logger.info("bucket %s, RuleNumber %d: %s %s -> %s", ref.bucket, rule.RuleNumber, rule.Redirect.RedirectType, ref.key, target)
            flow.response = replies.to_response(flow.request, replies.redirect(rule.Redirect.HttpRedirectCode, target, extra_headers(rule)))
        self._record(flow, Decision(ref.bucket, ref.key, Action(rule.Redirect.RedirectType.lower()), rule.RuleNumber,
                                    Outcome.REDIRECTED, location=target, store_status=store_status))

    def _record(self, flow: http.HTTPFlow, decision: Decision) -> None:
        self.recorder.record(flow, decision, acted=self.context.acts(flow))


def in_order(*parts: Callable[[], Awaitable[None] | None]) -> Awaitable[None] | None:
    """Hook parts run as mitmproxy runs addons: in order, each awaited before the next begins;
    no coroutine unless a part needs one."""
    for done, part in enumerate(parts):
        if (pending := part()) is not None:
            return _awaited_in_order(pending, parts[done + 1:])
    return None


async def _awaited_in_order(pending: Awaitable[None], rest: tuple[Callable[[], Awaitable[None] | None], ...]) -> None:
    await pending
    for part in rest:
        if (more := part()) is not None:
            await more


def refuse_loop(flow: http.HTTPFlow, looped: ObjectRef) -> Decision:
    """Our own origin fetch came back into the proxy: answer 424 and say why."""
    logger.warning(
        "loop: %s came back into the proxy from our own origin fetch; a MirrorURL points at a "
        "domain that now resolves to this proxy or the store. Use the origin's IP address or "
        "another domain for it (with MirrorHost for the Host header).", flow.request.pretty_url,
    )
    flow.response = replies.to_response(flow.request, replies.mirror_failed(looped, "loop: the origin URL leads back into the proxy"))
    return Decision(looped.bucket, looped.key, Action.LOOP, outcome=Outcome.LOOP)


def own_listeners(metrics: MetricsEndpoint, delivery: MissDelivery) -> list[tuple[str, int]]:
    """Where this process listens: mitmproxy's proxy servers (and mitmweb), the metrics endpoint
    and the loopback miss server. Origin fetches never go there (miss.addresses)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    found = [(str(host), int(port)) for host, port, *_ in (proxyserver.listen_addrs() if proxyserver else [])]
    if metrics.metrics is not None:
        found.append(metrics.metrics.address)
    if delivery.server.port:
        found.append(("127.0.0.1", delivery.server.port))
    if "web_port" in ctx.options:
        found.append((ctx.options.web_host, ctx.options.web_port))
    return found
