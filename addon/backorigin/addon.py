"""backorigin: OSS-style mirror and redirect back-to-origin for any S3-compatible store.

Loaded by mitmproxy from addon/script.py:
    mitmdump -s addon/script.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

`BackOrigin` holds rules -> decision -> act for GETs and HEADs of objects: which object
(s3.addressing), what the rules say (rules.plan.plan_get), asking the store first (miss.probe),
then a redirect (rules.targets), or a mirror (miss.mirror, answered by miss.delivery). Each other
concern is a child addon with its own options and hooks: the rules file, the mirror machinery
and its spool, deletes, write-through, the merged listing, the miss delivery, metrics, the ledger,
commands and the mitmweb view. mitmproxy runs this addon's hook first, then its children's, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from backorigin.context import Context
from backorigin.decision import METADATA_KEY, RECORDED_KEY, Action, Decision, Outcome, Recorder, set_aside_recorded
from backorigin.deletes.addon import Deletes
from backorigin.limits import STREAM_LARGE_BODIES
from backorigin.listing.addon import MergedListing
from backorigin.miss import objectmeta
from backorigin.miss.addon import Mirroring
from backorigin.miss.delivery import MissDelivery
from backorigin.miss.fleet import FleetLeases
from backorigin.miss.probe import StoreProbe, answer_from_store
from backorigin.miss.protect import OriginProtection
from backorigin.options import GivenOnce, check_choice
from backorigin.rules import plan
from backorigin.rules.model import LOOP_HEADER, RuleBook, RulesError
from backorigin.rules.plan import Act, GetPlan, plan_get
from backorigin.rules.rulesfile import RulesFile
from backorigin.rules.targets import extra_headers, location
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectRef, is_plain_object_call, is_signed
from backorigin.s3.store import StoreAnswer, StoreServerName, client_facing, upstream_proxy, upstream_verification
from backorigin.s3.stores import Stores
from backorigin.ui.commands import Commands
from backorigin.ui.contentview import DecisionView
from backorigin.ui.ledger import Ledger
from backorigin.ui.metrics import MetricsEndpoint
from backorigin.writethrough.addon import WriteThrough

logger = logging.getLogger(__name__)
HEAD_ON_MISS = ("object", "oss")
# mitmproxy sets the root logger to DEBUG and turns every record into an event on its loop:
# the HTTP and AWS libraries' dozens of DEBUG records per request would cost more than the work
for library in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3"):
    logging.getLogger(library).setLevel(logging.WARNING)


class BackOrigin:
    def __init__(self) -> None:
        self.rules_file = RulesFile()
        self.context = Context(self.rules_file)
        self.stores = Stores(self.context)
        self.recorder = Recorder()
        self.probe = StoreProbe()
        self.mirroring = Mirroring()
        self.protection = OriginProtection(self.mirroring)
        self.delivery = MissDelivery(self.recorder)
        self.deletes = Deletes(self.context, self.mirroring, self.delivery.refuse)
        self.listing = MergedListing(self.context, self.deletes.hide,
                                     leases_under=lambda bucket: self.mirroring.mirror.leases.prefix_in(bucket))
        self.writethrough = WriteThrough(self.context, self.mirroring)
        self.metrics = MetricsEndpoint(self.recorder.stats, self.mirroring, self.deletes.count, self.writethrough,
                                       self.stores.set_aside)
        self.addons = [self.rules_file, self.stores, self.mirroring, self.protection, FleetLeases(self.mirroring), self.deletes,
                       self.writethrough, self.listing, self.delivery, self.metrics, Ledger(self.recorder, lambda: self.deletes.location),
                       DecisionView(), StoreServerName(), Commands(self.context, self.recorder.stats, self.mirroring, self.deletes),
                       GivenOnce()]
        self.mirroring.origin.own_listeners = lambda: own_listeners(self.metrics, self.delivery)
        self._mirror_heads = True
        self._403_is_miss = False
        self._private_origins_ok = False
        self.rules_file.check = self._check_rules
        self.recorder.explain = lambda flow, decided: plan.rules_tried(  # the mitmweb view's "rules tried"
            self.context.rulebook, ObjectRef(decided.bucket, decided.key), flow.request, decided.store_status, self._mirror_heads)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "backorigin_head_on_miss", str, "object",
            "HEAD of a missing object: 'object' answers it as the object will answer (it is fetched and stored), "
            "for S3 tools that HEAD before they GET; 'oss' answers 404 unless the rule has MirrorAllowHeadObject.",
            choices=HEAD_ON_MISS,
        )
        loader.add_option(
            "backorigin_403_is_miss", bool, False,
            "Treat a GET's 403 AccessDenied as a miss once a HEAD with the proxy's own credentials finds no object "
            "(stores answer 403 instead of 404 to callers without ListBucket).",
        )
        loader.add_option(
            "backorigin_403_is_miss_private_origins", bool, False,
            "With backorigin_403_is_miss, allow Mirror rules that reach a private origin (MirrorAuth, or any "
            "MirrorHeaders.Set, such as a token): anyone the store denies then gets the private origin's objects. "
            "Refused unless this says so.",
        )
        loader.add_option("backorigin_dry_run", bool, False, "Decide and annotate only: never contact the origin, never store.")
        loader.add_option("backorigin_debug_header", bool, False, "Add an x-backorigin header with the decision to answers.")

    def configure(self, updated: set[str]) -> None:
        options = ctx.options  # read once here, not per flow: an option read copies its value every time
        self.context.dry_run = options.backorigin_dry_run
        self.recorder.debug_header = options.backorigin_debug_header
        self._mirror_heads = check_choice("backorigin_head_on_miss", options.backorigin_head_on_miss, HEAD_ON_MISS) == "object"
        self._403_is_miss = options.backorigin_403_is_miss
        self._private_origins_ok = options.backorigin_403_is_miss_private_origins
        try:
            self._check_rules(self.context.rulebook)
        except RulesError as e:
            raise exceptions.OptionsError(str(e)) from None
        if {"ssl_insecure", "ssl_verify_upstream_trusted_ca"} & updated:
            self.probe.client.verify = upstream_verification(options)

    def _check_rules(self, book: RuleBook) -> None:
        if self._403_is_miss and not self._private_origins_ok:
            plan.refuse_private_origins(book)

    # hooks -----------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Every live request is read once, as sent to the store (s3.reading); one set aside is counted."""
        if flow.live:
            self.context.read(flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Refuse our own origin fetches coming back in (a loop); let redirect rules without a
        status condition decide before the store is asked (OSS: "hide objects with a prefix"),
        unless an earlier rule needs the store's answer; and ask the store about GETs and HEADs
        that a rule may mirror, so that a miss is decided here and its answer can stream. Only
        that asking is awaited: every other request costs no coroutine."""
        if flow.request.method not in ("GET", "HEAD"):
            return None
        if flow.live and flow.response is None and self.mirroring.origin.marker.came_back(flow.request.headers.get_all(LOOP_HEADER)):
            self._record(flow, refuse_loop(flow, self.context.object(flow) or ObjectRef("", "")))
            return None
        if not flow.live:
            set_aside_recorded(flow)
        ref = self._candidate(flow)
        if ref is None:
            return None
        before = plan_get(self.context.rulebook, ref, flow.request, None, mirror_heads=self._mirror_heads)
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
        response = flow.response
        if (response is not None and 200 <= response.status_code < 300 and flow.request.method in ("GET", "HEAD")
                and not self.delivery.owns(flow) and not flow.metadata.get(METADATA_KEY) and self.context.object(flow)):
            objectmeta.restore_on_download(response)  # an object of a named store (a request set aside stays untouched)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Hits (counted, without a coroutine), and 404s the request hook did not see coming (a
        replay, a dry run, an object deleted from the store behind our back, a store that could not
        be asked)."""
        response = flow.response
        if response is None or self.delivery.owns(flow) or (self.context.acts(flow) and flow.metadata.get(METADATA_KEY)):
            return None
        ref = self._candidate(flow)
        if ref is None:
            return None
        book, status = self.context.rulebook, response.status_code
        if 200 <= status < 300 and self.context.acts(flow) and not book.may_act_on(ref.bucket, status):
            self.recorder.served_by_store(flow, plan.covering_rule_number(book, ref))
            return None
        return self._after_store(flow, response, ref)

    async def _after_store(self, flow: http.HTTPFlow, response: http.Response, ref: ObjectRef) -> None:
        status = await self._store_status(flow, response, ref)
        if status is None:
            return
        body = (response.raw_content or b"") if response.status_code >= 400 else b""  # a hit's body may be large, or gone
        answer = StoreAnswer(response.status_code, tuple(response.headers.items(multi=True)), body)
        after = await self._plan(flow, ref, status, answer)
        if after.act is Act.STORE:
            if 200 <= status < 300:
                self.recorder.served_by_store(flow, plan.covering_rule_number(self.context.rulebook, ref))
        elif after.act is Act.MIRROR and self.context.acts(flow):
            mirror = self.mirroring.mirror
            endpoint = self.context.endpoint(flow.request)
            assert endpoint is not None  # ref came from the same reading
            mirror.known.discard((endpoint, ref.bucket, ref.key))
            miss = await mirror.start(endpoint, ref, after.rule, after.origin, is_signed(flow.request))  # type: ignore[arg-type]
            await self.delivery.deliver_late(flow, mirror, miss, answer, ref)
        else:
            self._act_without_origin(flow, ref, after, status)

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
        mirror = self.mirroring.mirror
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
        status = plan.rules_status(flow.request.method, answer.status, answer.body)
        if plan.may_hide_a_miss(answer.status, answer.body, self._403_is_miss):
            status = await self.probe.denied_status(endpoint, ref)
        if not stored and known in mirror.known:  # stored while we asked: the store answers again
            return
        if status is None:
            answer_from_store(flow, answer)
            return
        after = await self._plan(flow, ref, status, answer)
        if after.act is Act.MIRROR:
            miss = await mirror.start(endpoint, ref, after.rule, after.origin, is_signed(flow.request))  # type: ignore[arg-type]
            if miss is not None:  # None: stored meanwhile (by this proxy or another), the request goes to the store
                await self.delivery.deliver(flow, mirror, miss, answer if answer.status == 404 else StoreAnswer(404, ()))
            return
        if after.act is not Act.REDIRECT:
            answer_from_store(flow, answer)
        self._act_without_origin(flow, ref, after, status)

    async def _plan(self, flow: http.HTTPFlow, ref: ObjectRef, status: int, answer: StoreAnswer) -> GetPlan:
        deleted = status == 404 and (self.writethrough.writing(flow, ref) or await self.deletes.is_deleted(ref))
        return plan_get(self.context.rulebook, ref, flow.request, status, mirror_heads=self._mirror_heads,
                        delete_marker=plan.is_delete_marker(answer.headers), deleted=deleted)

    def _act_without_origin(self, flow: http.HTTPFlow, ref: ObjectRef, after: GetPlan, status: int) -> None:
        """A redirect; a miss not mirrored (the store's 404 stands); a mirror only decided (dry run, replay)."""
        if after.act is Act.REDIRECT:
            self._redirect(flow, ref, after, store_status=status)
        elif after.rule is not None and after.act in (Act.KEEP_404, Act.MIRROR):
            if after.outcome is Outcome.UNSAFE_KEY:
                logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, after.rule.RuleNumber, after.detail)
            origin_url = after.origin.url if after.origin is not None else ""
            self._record(flow, Decision(ref.bucket, ref.key, Action.MIRROR, after.rule.RuleNumber, after.outcome,
                                        origin_url=origin_url, detail=after.detail, store_status=status))

    async def _store_status(self, flow: http.HTTPFlow, response: http.Response, ref: ObjectRef) -> int | None:
        """The store's status as the rules see it (rules.plan), from the store's answer or, for a
        replayed flow the recording answered itself, from its recorded decision. None: no rule may act."""
        if not flow.live and (recorded := plan.recorded_status(flow.metadata.get(RECORDED_KEY))):
            return recorded
        body = (response.get_content(strict=False) or b"") if response.status_code in (403, 404) else b""
        unrecorded = flow.is_replay == "response" and not response.raw_content
        status = plan.rules_status(flow.request.method, response.status_code, body, unrecorded_replay=unrecorded)
        if plan.may_hide_a_miss(response.status_code, body, self._403_is_miss):
            if not self.context.acts(flow):
                return 404  # a replay cannot ask the store; it assumes the object was missing
            return await self.probe.denied_status(endpoint, ref) if (endpoint := self.context.endpoint(flow.request)) else 403
        return status

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
