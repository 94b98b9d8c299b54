"""Mirror back-to-origin: one fill per missed object, answered from the fill, stored from the spool.

`Mirror` owns the origin client, the fills in flight, the write-back, the store-existence cache
and the origins' guard (miss.guard: 404s remembered, fetches at once, circuits). `start` begins
(or joins) the one origin GET of an object; `reply` answers one client from it (miss.answer);
when the fetch ends, a good body is spooled (body, then manifest) before any answer completes,
and handed to the write-back. A fill stays registered until
its write-back has landed, so every miss until then is served from the spool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from backorigin.decision import Action, Decision, Outcome
from backorigin.httpclient import describe_error
from backorigin.limits import IN_HOOK_ANSWER_LIMIT
from backorigin.miss import objectmeta
from backorigin.miss.answer import respond
from backorigin.miss.fill import Fill, Settled
from backorigin.miss.guard import Full, OriginGuard
from backorigin.miss.mirroredobjects import MirroredObjects
from backorigin.miss.origin import Failure, OriginClient, OriginResult
from backorigin.rules.model import RoutingRule
from backorigin.rules.targets import OriginRequest
from backorigin.s3.addressing import ObjectKey, ObjectRef
from backorigin.s3.replies import Reply
from backorigin.s3.storeclient import StoreAnswer
from backorigin.writeback.spool import ObjectUpload
from backorigin.writeback.supervisor import WriteBackSupervisor

logger = logging.getLogger(__name__)


@dataclass
class Miss:
    """One client's miss, from the request hook's decision until its answer is complete."""

    ref: ObjectRef
    rule: RoutingRule
    origin: OriginRequest
    fill: Fill
    started: bool  # this miss started the origin fetch (others joined it)
    reply: Reply | None = None
    note: str = ""  # what the decision says when nothing else does

    def decision(self, outcome: Outcome | None = None, detail: str = "") -> Decision:
        settled = self.fill.settled
        reply = self.reply
        return Decision(
            self.ref.bucket, self.ref.key, Action.MIRROR, self.rule.RuleNumber,
            outcome=outcome or (reply.outcome if reply else None) or Outcome.MIRRORED,
            origin_url=settled.result.url if settled and settled.result.url else self.origin.url,
            origin_status=reply.origin_status if reply else None,
            bytes=settled.result.size if settled and self.started else 0,
            writeback=settled.writeback if settled and settled.result.ok else "",
            detail=detail or (reply.detail if reply else "") or self.note or ("" if self.started else "joined the fetch under way"),
            store_status=404,
            failure=reply.failure if reply else "",
        )


def is_utf8(text: str) -> bool:
    """Text from a client's path holds bytes that are not UTF-8 surrogate-escaped (s3.reading)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Mirror:
    def __init__(self, origin: OriginClient, writeback: WriteBackSupervisor, guard: OriginGuard, objects: MirroredObjects,
                 fsync: bool = False, on_fetched: Callable[[OriginResult, float], None] = lambda result, seconds: None) -> None:
        """`origin` tells `guard` of each of its answers and `writeback` tells `objects` of each
        write-back that ended (both made so by their makers: backorigin.parts); `on_fetched(result,
        seconds)`: told of every origin fetch and how long it took (ui.metrics)."""
        self.origin = origin
        self.writeback = writeback
        self.guard = guard  # the origins' 404s, concurrency limits and circuits
        self.objects = objects
        self.fills, self.known, self.refused = objects.fills, objects.known, objects.refused
        self.leases = objects.leases  # taking turns with the other proxies of a fleet; off until miss.fleetleases configures it
        self.fsync = fsync
        self.on_fetched = on_fetched
        self.min_free = 0  # bytes the spool's disk keeps free (backorigin_spool_min_free)
        self._fetches: set[asyncio.Task] = set()
        self._claims: dict[ObjectKey, asyncio.Future[Fill | None]] = {}  # new fills waiting for their turn in the fleet

    async def start(self, endpoint: str, ref: ObjectRef, rule: RoutingRule, request: OriginRequest,
                    signed: bool = False) -> Miss | None:
        """Join the fill of this object, or start one (a fill of its own, never stored, for
        MirrorProxyPass and for an object the store refused before). A new fill first takes its
        turn among the proxies of the fleet (miss.leases), which may wait for another proxy's fill.
        None when the object has landed in the store since the store said it was missing (its
        write-back, or another proxy's, ended while the caller awaited something): the store
        answers, no origin GET. `signed`: the client's request was signed (its fetch counts for the
        bucket's signed clients: miss.guard)."""
        key: ObjectKey = (endpoint, ref.bucket, ref.key)
        request = replace(request, tenant=(ref.bucket, signed))
        if key in self.known:
            return None
        not_storing = "MirrorProxyPass" if rule.Redirect.MirrorProxyPass else ""
        if not is_utf8(ref.key):
            not_storing = "the key is not UTF-8 text, which S3 keys are"
        if key in self.refused:
            not_storing = f"the store refused it before: {self.refused[key]}"
            logger.info("s3://%s/%s is served from the origin without storing: %s", ref.bucket, ref.key, not_storing)
        fill = None if not_storing else self.fills.get(key)
        if fill is not None:
            logger.info("another client joins the origin fetch under way for %s (or its spooled body)", ref.key)
            return Miss(ref, rule, request, fill, started=False)
        if self.guard.not_found.holds(ref.bucket, ref.key, request):
            self.guard.counts["not_found_hits"] += 1
            fill = Fill(key, self.writeback.spool.new_body_path(), self._describer(endpoint, ref, rule))
            fill.settle(Settled(OriginResult(request.url, 404), "none (no object)"))
            return Miss(ref, rule, request, fill, started=False, note="the origin's 404, remembered (backorigin_origin_404_ttl)")
        if not_storing:
            return Miss(ref, rule, request, self._fill(key, ref, rule, request, not_storing), started=True)
        claim = self._claims.get(key)
        started = claim is None
        if claim is None:  # the other misses of the object meanwhile wait for this one's turn
            claim = self._claims[key] = asyncio.ensure_future(self._claim(key, ref, rule, request))
            claim.add_done_callback(lambda _: self._claims.pop(key, None))
        else:
            logger.info("another client joins the origin fetch under way for %s (its turn in the fleet)", ref.key)
        fill = await asyncio.shield(claim)  # a client that leaves does not end the others' turn
        return Miss(ref, rule, request, fill, started=started) if fill is not None else None

    async def _claim(self, key: ObjectKey, ref: ObjectRef, rule: RoutingRule, request: OriginRequest) -> Fill | None:
        """The object's fill, once it is this proxy's turn; None when another proxy's fill landed."""
        turn = await self.leases.take(key)
        if turn.stored:
            self.known.add(key)
            logger.info("s3://%s/%s was stored by another proxy's fill: the store answers", ref.bucket, ref.key)
            return None
        fill = self._fill(key, ref, rule, request, "")
        fill.lease = turn.lease
        self.fills.add(fill)
        return fill

    def _fill(self, key: ObjectKey, ref: ObjectRef, rule: RoutingRule, request: OriginRequest, not_storing: str) -> Fill:
        """A new fill and its origin fetch."""
        fill = Fill(key, self.writeback.spool.new_body_path(), self._describer(key[0], ref, rule))
        fill.keep_free = self.min_free
        task = asyncio.ensure_future(self._fetch(fill, ref, rule, request, not_storing))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)
        return fill

    async def reply(self, miss: Miss, method: str, header: Callable[[str], str | None], store_404: StoreAnswer) -> Reply:
        miss.reply = await respond(miss.fill, method, header, miss.ref, store_404, self.origin.timeouts.whole_limit,
                                   miss.origin.transparent_codes)
        return miss.reply

    async def fits_in_memory(self, miss: Miss) -> bool:
        """Whether the miss's answer is small enough to be made in memory in the request hook: the
        origin gave no body, or announced one up to limits.IN_HOOK_ANSWER_LIMIT (and the
        whole-answer limit, past which a body streams as it arrives)."""
        fill = miss.fill
        await fill.began()
        return fill.upload is None or (fill.declared is not None and fill.declared <= self.in_hook_limit)

    @property
    def in_hook_limit(self) -> int:
        return min(IN_HOOK_ANSWER_LIMIT, self.origin.timeouts.whole_limit)

    def resume(self) -> None:
        """Start the write-backs, resuming the spool's: each object is served from the spool until it lands."""
        for manifest, upload in self.writeback.resume():
            if upload.etag:  # spooled by a version that announced no ETag: only uploaded
                fill = Fill.spooled((upload.endpoint, upload.bucket, upload.key), self.writeback.spool.body_of(manifest), upload)
                fill.manifest = manifest
                self.fills.add(fill)

    def _describer(self, endpoint: str, ref: ObjectRef, rule: RoutingRule) -> Callable[..., ObjectUpload]:
        def describe(url: str, headers: tuple[tuple[str, str], ...], announced_at: str) -> ObjectUpload:
            return objectmeta.describe(endpoint, ref, rule, OriginResult(url, 200, headers), announced_at)
        return describe

    async def _fetch(self, fill: Fill, ref: ObjectRef, rule: RoutingRule, request: OriginRequest, not_storing: str) -> None:
        started = time.monotonic()
        result = OriginResult.failed(request.url, Failure.NETWORK, "the fetch was cancelled")
        writeback = "none (no object)"
        try:
            try:
                result = await self._guarded(request, fill)
                if result.status == 404:
                    self.guard.not_found.add(ref.bucket, ref.key, request)
            except Exception as e:  # never leave readers waiting
                logger.exception("fetch of %s failed", request.url)
                result = OriginResult.failed(request.url, Failure.NETWORK, describe_error(e))
            logger.info("bucket %s, RuleNumber %d: GET %s -> %s", ref.bucket, rule.RuleNumber, result.url,
                        " ".join(str(part) for part in (result.status, result.detail) if part))
            self.on_fetched(result, time.monotonic() - started)
            try:
                writeback = self._spool(fill, result, not_storing)
            except OSError as e:  # a full disk, an I/O error: this fill ends and leaves nothing behind
                logger.error("not stored: s3://%s/%s: the spool failed: %s", ref.bucket, ref.key, e)
                result = OriginResult.failed(result.url, Failure.SPOOL, f"{type(e).__name__}: {e}")
                writeback = "none (the spool failed)"
        finally:  # every fill settles, whatever happened: no reader waits, no key hangs
            fill.settle(Settled(result, writeback))
            if writeback != "queued":  # nothing will land: the next miss asks the origin again
                self.objects.drop(fill)
            if not result.ok:
                fill.give_back()

    async def _guarded(self, request: OriginRequest, fill: Fill) -> OriginResult:
        """The fetch, unless the origin's circuit is open (then the secondary origin, or a failure
        at once) or its fetches and queue are all taken (miss.guard)."""
        guard, tenant = self.guard, request.tenant
        breaker = guard.breaker_for(request.url, tenant)
        if not breaker.allow():
            if not (request.fallback_url and guard.breaker_for(request.fallback_url, tenant).allow()):
                guard.counts["failed_fast"] += 1
                return OriginResult.failed(request.url, Failure.CIRCUIT_OPEN, f"the circuit of {breaker.host} is open")
            request = replace(request, url=request.fallback_url, fallback_url=None, probe_url=None)
            breaker = guard.breaker_for(request.url, tenant)
        slots = guard.slots_for(request.url)
        if slots.running >= slots.limit:
            guard.counts["queued"] += 1
        try:
            async with slots.slot(tenant):
                return await self.origin.fetch(request, fill)
        except Full as e:
            guard.counts["refused"] += 1
            return OriginResult.failed(request.url, Failure.BUSY, f"{breaker.host}: {e}")
        finally:
            breaker.release()

    def _spool(self, fill: Fill, result: OriginResult, not_storing: str) -> str:
        """Spool a good body with its manifest (the promise to store it), or give it up."""
        fill.close_body(self.fsync and result.ok)
        why = ""
        if not result.ok or fill.upload is None:
            why = "no object"
        elif not_storing:
            why = not_storing
        elif fill.deleted:
            why = "deleted through the proxy meanwhile"
            logger.info("not stored: s3://%s/%s: %s", fill.upload.bucket, fill.upload.key, why)
        elif result.not_storable:
            why = result.not_storable
            logger.warning("not stored: s3://%s/%s: %s", fill.upload.bucket, fill.upload.key, why)
        elif not self.writeback.has_room():
            why = f"the write-back queue is full ({self.writeback.max_pending})"
            logger.warning("not stored this time: s3://%s/%s: %s", fill.upload.bucket, fill.upload.key, why)
        elif self.writeback.spool.free_bytes() < self.min_free:
            why = "the spool's disk is below backorigin_spool_min_free"
            self.writeback.outcomes["low_disk"] += 1
            logger.warning("not stored this time: s3://%s/%s: %s", fill.upload.bucket, fill.upload.key, why)
        if why:
            if result.ok:  # readers keep their own descriptors; a failed fill gives its space back once settled
                fill.path.unlink(missing_ok=True)
            return f"none ({why})"
        assert fill.upload is not None  # a 200 began the fill
        if fill.announced and fill.announced != result.etag:  # the origin's parts were not all of one size
            logger.warning("s3://%s/%s: clients were told ETag %s; stored as parts of %d bytes it will be %s",
                           fill.upload.bucket, fill.upload.key, fill.announced, result.part_size, result.etag)
        upload = replace(fill.upload, size=result.size, md5=result.md5, etag=result.etag, part_size=result.part_size)
        fill.manifest = self.writeback.submit(upload, fill.path)
        fill.path = self.writeback.spool.body_of(fill.manifest)
        return "queued"

    def forget(self, key: ObjectKey, since: float) -> Awaitable[bool]:
        """The object was deleted through the proxy (the store said yes to a delete sent at `since`,
        a time.time()): from now on no fill or write-back of it may recreate it. Clients already
        reading a fill still get their bytes. Its result: whether a write-back of it was stored
        since (the delete may have come first: the caller deletes the object again)."""
        self.known.discard(key)
        fill = self.fills.get(key)
        if fill is not None:
            self.objects.drop(fill)
            fill.deleted = True
        return self.writeback.withdraw(key, since)

    async def shutdown(self, timeout: float) -> None:
        for claim in self._claims.values():
            claim.cancel()
        fetches = [t for t in self._fetches if not t.done()]
        for task in fetches:
            task.cancel()  # an unfinished fetch is dropped; the object mirrors again next time
        await asyncio.gather(*fetches, return_exceptions=True)
        await self.writeback.drain(timeout)
        await self.leases.aclose(timeout)
        await self.origin.aclose()
