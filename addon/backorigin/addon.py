"""backorigin: OSS-style mirror back-to-origin for any S3-compatible store.

Loaded by mitmproxy from addon/script.py:
    mitmdump -s addon/script.py --mode reverse:http://STORE:PORT --set backorigin_rules=rules.json

The addon only wires the modules: s3 (which object), rules (which rule), redirect
(Location), storeprobe (is it a miss, asked before mitmproxy sends the request), mirror
(fetch once, answer, store), missserver (where a miss is re-routed so that its answer
streams), decision (what happened, for people and tools). It holds no policy of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from backorigin.deletes.tombstones import Tombstones, make_tombstones, mirrored_by, reverse_target
from backorigin.listing.merge import MergedListings
from backorigin.miss import objectmeta
from backorigin.miss.answer import ANSWER_IN_MEMORY, collect
from backorigin.miss.mirror import Mirror, Miss, Rerouted
from backorigin.miss.origin import OriginClient, OriginRequest, OriginResult, Timeouts, UnsafeKey, build_request
from backorigin.miss.probe import StoreAnswer, StoreProbe, store_has
from backorigin.miss.server import MissServer
from backorigin.options import parse_seconds, parse_size
from backorigin.rules import plan as storeanswer
from backorigin.rules import targets as redirect
from backorigin.rules.model import LOOP_HEADER, RoutingRule, RuleBook
from backorigin.rules.rulesfile import RulesFile
from backorigin.s3 import addressing as s3
from backorigin.s3 import replies
from backorigin.s3.store import client_facing, store_endpoint, upstream_proxy, upstream_verification
from backorigin.ui.commands import Commands
from backorigin.ui.contentview import DecisionView
from backorigin.ui.decision import METADATA_KEY, RECORDED_KEY, Decision, Stats, add_debug_header, annotate, set_aside_recorded
from backorigin.ui.ledger import Ledger
from backorigin.ui.metrics import AddonCollector, AddonState, Metrics, origin_error_kind
from backorigin.writeback.upload import shared_s3_client
from backorigin.writeback.worker import WriteBackWorker

logger = logging.getLogger(__name__)
DELETING_KEY = "backorigin_deleting"  # a delete's keys, from its request hook to its response hook
# mitmproxy sets the root logger to DEBUG and turns every record into an event on its loop:
# the HTTP and AWS libraries' dozens of DEBUG records per request would cost more than the work
for library in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3"):
    logging.getLogger(library).setLevel(logging.WARNING)


_TIMEOUT_OPTIONS = {
    "backorigin_origin_connect_timeout": "connect",
    "backorigin_origin_read_timeout": "read",
    "backorigin_origin_timeout": "total",
    "backorigin_copy_timeout": "copy",
}


class BackOrigin:
    """The hooks: each asks the rules and hands the flow to the piece that acts (the store
    probe and miss server for misses, redirect for redirect rules, decision for the record).
    The rules file, the commands and the mitmweb view are child addons."""

    def __init__(self) -> None:
        self.rules_file = RulesFile()
        self.addons = [self.rules_file, Commands(self), DecisionView()]
        self.origin = OriginClient(Timeouts(), max_inline=64 * 1024**2)
        self.mirror: Mirror  # needs the spool directory: made in configure
        self.stats = Stats()
        self.ledger: Ledger | None = None
        # option values the hooks read, copied in configure()
        self.vhost_domains: tuple[str, ...] = ()
        self._dry_run = False
        self._mirror_heads = True
        self.probe: StoreProbe  # made in configure, from mitmproxy's upstream TLS options
        self.tombstones: Tombstones  # made in configure: beside the spool, or in the store
        self._deletes_stick = True
        self._deleting: set[tuple[str, str]] = set()  # deletes sent to the store, not yet answered
        self.metrics: Metrics | None = None
        self.listings = MergedListings()
        self._merged_listing = False
        self.server = MissServer()
        self.misses: dict[str, Rerouted] = {}  # flow id -> its miss, while the miss server answers it
        self._s3_endpoint: str | None = None
        self._debug_header = False
        self._403_is_miss = False

    @property
    def rulebook(self) -> RuleBook:
        return self.rules_file.rulebook

    def load(self, loader: Loader) -> None:
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
            "backorigin_s3_endpoint", Optional[str], None,  # type: ignore[arg-type]  # mitmproxy's Loader is typed too narrowly
            "Endpoint for write-backs (e.g. http://127.0.0.1:8333). Default: the scheme, host and port that answered.",
        )
        loader.add_option(
            "backorigin_spool_dir", Optional[str], None,  # type: ignore[arg-type]
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
        loader.add_option(
            "backorigin_deletes", str, "stick",
            "'stick': a DeleteObject/DeleteObjects through the proxy leaves a tombstone, so the key is never mirrored "
            "again until a PUT, CopyObject or CompleteMultipartUpload of it; 'resurrect': OSS's behaviour (the next "
            "GET mirrors it back).",
        )
        loader.add_option(
            "backorigin_tombstones", Optional[str], None,  # type: ignore[arg-type]
            "Where tombstones live: default a folder beside the spool (one proxy); s3://BUCKET/PREFIX/ keeps them "
            "in the store (written create-only), shared by every proxy in front of it.",
        )
        loader.add_option(
            "backorigin_metrics_port", Optional[int], None,  # type: ignore[arg-type]
            "Serve Prometheus metrics on this port (http://HOST:PORT/metrics); off by default.",
        )
        loader.add_option("backorigin_metrics_host", str, "127.0.0.1", "Address the metrics endpoint listens on.")
        loader.add_option(
            "backorigin_merged_listing", bool, False,
            "ListObjects(V2) through the proxy also list the objects of Mirror rules whose origin is an S3 bucket "
            "(MirrorURL http(s)://host/BUCKET/[PREFIX/], public or MirrorAuth), merged into the bucket's listing.",
        )
        loader.add_option("backorigin_dry_run", bool, False, "Decide and annotate only: never contact the origin, never store.")
        loader.add_option("backorigin_debug_header", bool, False, "Add an x-backorigin header with the decision to answers.")
        loader.add_option("backorigin_ledger", Optional[str], None,  # type: ignore[arg-type]
                          "Append every matched miss to this JSON-lines file.")

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        if set(_TIMEOUT_OPTIONS) & updated:
            self.origin.timeouts = Timeouts(
                **{field: parse_seconds(name, getattr(options, name)) for name, field in _TIMEOUT_OPTIONS.items()}
            )
        if "backorigin_max_inline" in updated:
            self.origin.max_inline = parse_size("backorigin_max_inline", options.backorigin_max_inline)
        if "backorigin_shutdown_timeout" in updated:
            parse_seconds("backorigin_shutdown_timeout", options.backorigin_shutdown_timeout)
        if "backorigin_deletes" in updated and options.backorigin_deletes not in ("stick", "resurrect"):
            raise exceptions.OptionsError(
                f"backorigin_deletes: {options.backorigin_deletes!r} is neither 'stick' nor 'resurrect'"
            )
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
        self.vhost_domains = tuple(options.backorigin_vhost_domains)
        self._dry_run = options.backorigin_dry_run
        self._mirror_heads = options.backorigin_head_on_miss == "object"
        self._s3_endpoint = options.backorigin_s3_endpoint
        self._debug_header = options.backorigin_debug_header
        self._403_is_miss = options.backorigin_403_is_miss
        configured = hasattr(self, "mirror")  # not before the first configure: it needs the spool directory
        if not configured or {"backorigin_spool_dir", "confdir"} & updated:
            spool = Path(options.backorigin_spool_dir or Path(options.confdir).expanduser() / "backorigin-spool")
            if configured and self.mirror.writeback.spool.directory != spool:
                raise exceptions.OptionsError("backorigin_spool_dir: cannot change while running; restart instead")
            writeback = WriteBackWorker(spool, fsync=options.backorigin_spool_fsync)
            self.mirror = Mirror(self.origin, writeback, fsync=options.backorigin_spool_fsync)
        writeback = self.mirror.writeback
        if "backorigin_spool_fsync" in updated:
            self.mirror.fsync = writeback.spool.fsync = options.backorigin_spool_fsync
        store = options.backorigin_s3_endpoint or reverse_target(options)
        if not configured or {"backorigin_tombstones", "backorigin_spool_dir", "confdir"} & updated:
            self.tombstones = make_tombstones(options.backorigin_tombstones, writeback.spool.directory, store)
        # the worker's arguments, read when it starts (at running)
        writeback.workers = options.backorigin_writeback_workers
        writeback.max_pending = options.backorigin_writeback_queue
        writeback.endpoint = options.backorigin_s3_endpoint
        writeback.tombstones = (options.backorigin_tombstones, store) if options.backorigin_deletes == "stick" else None
        self._deletes_stick = options.backorigin_deletes == "stick"
        if {"backorigin_metrics_port", "backorigin_metrics_host"} & updated:
            self._serve_metrics(options.backorigin_metrics_port, options.backorigin_metrics_host)
        if not configured or {"ssl_insecure", "ssl_verify_upstream_trusted_ca"} & updated:
            self.probe = StoreProbe(upstream_verification(options))
            self.listings.verify = upstream_verification(options)
        self._merged_listing = options.backorigin_merged_listing

    def running(self) -> None:
        """Start the write-back worker; it resumes what a previous run left spooled, and each
        such object is served from the spool until it lands."""
        self.mirror.resume()

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
            looped = self._object(flow) or s3.ObjectRef("", "")
            loop = replies.mirror_failed(looped, "loop: the origin URL leads back into the proxy")
            flow.response = replies.to_response(flow.request, loop)
            self._record(flow, Decision(looped.bucket, looped.key, "loop", outcome="loop"))
            return
        if not flow.live:
            set_aside_recorded(flow)
        if self._merged_listing and self._acts(flow) and flow.response is None:
            listing = await self.listings.answer(flow.request, self.rulebook, self._endpoint(flow.request),
                                                 upstream_proxy(flow), virtual_host_domains=self.vhost_domains,
                                                 tombstoned=self._tombstones_under)
            if listing is not None:
                flow.response = listing
                return
        if self._deletes_stick and self._acts(flow) and flow.response is None:
            if deleted := self._deleted_by(flow):
                await self._before_delete(flow, deleted)
                return
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
        for ref in flow.metadata.pop(DELETING_KEY, []):
            self._deleting.discard(tuple(ref))
        if miss := self.misses.pop(flow.id, None):
            self.server.withdraw(miss.ticket)  # unused when the client left before mitmproxy came to it
            flow.request = miss.client_request
            self._record(flow, miss.miss.decision("broken", str(flow.error)))

    async def response(self, flow: http.HTTPFlow) -> None:
        if self._deletes_stick and self._acts(flow) and flow.response is not None:
            await self._after_write(flow, flow.response)
        if miss := self.misses.pop(flow.id, None):
            flow.request = miss.client_request  # recordings and the UI show what the client asked
            if flow.request.method == "GET" and flow.response is not None and flow.response.status_code < 300:
                self.stats.served["origin"] += 1
            self._record(flow, miss.miss.decision(), header=False)  # responseheaders added it
            return
        ref = self._candidate(flow)
        response = flow.response
        if ref is None or response is None or (self._acts(flow) and flow.metadata.get(METADATA_KEY)):
            return
        status = await self._store_status(flow, response, ref)
        if status is None:
            return
        rule = self.rulebook.decide_after_store(ref.bucket, ref.key, flow.request.method, flow.request.headers.get, status,
                                                self._mirror_heads)
        if rule is None:
            if 200 <= status < 300:
                objectmeta.restore_on_download(response)
                if flow.request.method == "GET" and mirrored_by(self.rulebook.rules_for(ref.bucket), ref.key):
                    self.stats.served["store"] += 1
        elif not rule.Redirect.is_mirror:
            self._redirect(flow, ref, rule, store_status=status)
        elif status == 404:
            await self._answer_late_miss(flow, response, ref, rule)

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
        if storeanswer.shows_object(answer.status):
            self.mirror.known.add(known)
            return
        status = storeanswer.rules_status(flow.request.method, answer.status, answer.body)
        if storeanswer.may_hide_a_miss(answer.status, answer.body, self._403_is_miss):
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
        if await self._no_resurrection(flow, ref, rule, answer.headers):
            return
        store_404 = answer if answer.status == 404 else StoreAnswer(404, (), b"")
        await self._reroute_miss(flow, ref, rule, endpoint, store_404)

    async def _reroute_miss(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule, endpoint: str,
                            store_404: StoreAnswer) -> None:
        """Answer a small miss right here, from memory; re-route a larger one to the miss
        server, which streams it."""
        origin_request = self._origin_request(flow, ref, rule)
        if origin_request is None:
            return  # the store answers its own 404
        miss = self.mirror.start(endpoint, ref, rule, origin_request)
        if miss is None:
            return  # stored meanwhile: the request goes to the store
        store_404 = store_404 if store_404.body else StoreAnswer.of(replies.no_such_key(ref))
        if await self.mirror.fits_in_memory(miss):
            await self._answer_here(flow, miss, store_404, ANSWER_IN_MEMORY)
            return
        await self.server.ensure_started()
        client_request = flow.request.copy()
        path = self.server.issue(
            lambda: self.mirror.reply(miss, client_request.method, client_request.headers.get, store_404)
        )
        self.misses[flow.id] = Rerouted(miss, client_request, path)
        flow.request.scheme, flow.request.host, flow.request.port, flow.request.path = "http", "127.0.0.1", self.server.port, path
        flow.server_conn.via = None  # in upstream mode too, the miss server is reached directly

    async def _answer_late_miss(self, flow: http.HTTPFlow, response: http.Response, ref: s3.ObjectRef,
                                rule: RoutingRule) -> None:
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
        if await self._no_resurrection(flow, ref, rule, tuple(response.headers.items(multi=True))):
            return
        endpoint = self._endpoint(flow.request)
        self.mirror.known.discard((endpoint, ref.bucket, ref.key))
        miss = self.mirror.start(endpoint, ref, rule, origin_request)
        assert miss is not None  # nothing is known to be stored: discarded above
        store_404 = StoreAnswer(404, tuple(response.headers.items(multi=True)), response.raw_content or b"")
        await self._answer_here(flow, miss, store_404, self.origin.max_inline)

    async def _answer_here(self, flow: http.HTTPFlow, miss: Miss, store_404: StoreAnswer, limit: int) -> None:
        """The miss's answer as the flow's response, its body read into memory: up to `limit`
        bytes, else 503 SlowDown (S3 clients retry; the retry finds the fill or the object)."""
        reply = await self.mirror.reply(miss, flow.request.method, flow.request.headers.get, store_404)
        if reply.stream is not None:
            reply = await collect(reply, limit) or replies.slow_down(miss.ref)
        flow.response = replies.to_response(flow.request, reply)
        if flow.request.method == "GET" and reply.status < 300:
            self.stats.served["origin"] += 1
        self._record(flow, miss.decision())

    # deletes that stick ---------------------------------------------------------------------

    def _deleted_by(self, flow: http.HTTPFlow) -> list[s3.ObjectRef]:
        """The objects under Mirror rules that a DeleteObject or DeleteObjects would delete."""
        kind = s3.write_kind(flow.request)
        if kind == "delete":
            refs = [ref] if (ref := self._object(flow)) else []
        elif kind == "delete-many" and (bucket := s3.bucket_of(flow.request, self.vhost_domains)):
            refs = [s3.ObjectRef(bucket, key) for key in s3.keys_in(flow.request.raw_content or b"", "Object")]
        else:
            return []
        return [ref for ref in refs if mirrored_by(self.rulebook.rules_for(ref.bucket), ref.key)]

    async def _before_delete(self, flow: http.HTTPFlow, refs: list[s3.ObjectRef]) -> None:
        """Before the delete goes to the store: no miss of these keys mirrors from now on, a fill
        under way is never stored, a queued write-back is withdrawn and one being uploaded
        lands first, so the delete always comes last."""
        endpoint = self._endpoint(flow.request)
        for ref in refs:
            self._deleting.add((ref.bucket, ref.key))
            await self.mirror.forget((endpoint, ref.bucket, ref.key))
        flow.metadata[DELETING_KEY] = [[ref.bucket, ref.key] for ref in refs]

    async def _after_write(self, flow: http.HTTPFlow, response: http.Response) -> None:
        """The store's answer to a write: a delete that succeeded leaves tombstones; a PUT,
        copy or completed multipart upload of a key clears its tombstone."""
        deleting = [s3.ObjectRef(*ref) for ref in flow.metadata.pop(DELETING_KEY, [])]
        succeeded = 200 <= response.status_code < 300
        if deleting and succeeded:
            refused = set(s3.keys_in(response.raw_content or b"", "Error")) if s3.write_kind(flow.request) == "delete-many" else set()
            done = [ref for ref in deleting if ref.key not in refused]
            for ref in done:
                await asyncio.to_thread(self.tombstones.add, ref.bucket, ref.key)
            logger.info("tombstone(s) for %s", ", ".join(f"s3://{r.bucket}/{r.key}" for r in done))
        for ref in deleting:
            self._deleting.discard((ref.bucket, ref.key))
        written = self._object(flow) if succeeded and s3.write_kind(flow.request) == "create" else None
        if written and mirrored_by(self.rulebook.rules_for(written.bucket), written.key) and await self._is_tombstoned(written):
            await asyncio.to_thread(self.tombstones.discard, written.bucket, written.key)
            logger.info("tombstone of s3://%s/%s cleared by a write", written.bucket, written.key)

    def _tombstones_under(self, bucket: str, prefix: str) -> list[str]:
        """Keys of the bucket under `prefix` that a merged listing hides (blocking: run in a thread)."""
        if not self._deletes_stick:
            return []
        return [key for b, key in self.tombstones if b == bucket and key.startswith(prefix)]

    async def _is_tombstoned(self, ref: s3.ObjectRef) -> bool:
        found = (ref.bucket, ref.key)
        if found in self._deleting:
            return True
        if self.tombstones.blocking:
            return await asyncio.to_thread(self.tombstones.__contains__, found)
        return found in self.tombstones

    async def _no_resurrection(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule,
                               store_headers: tuple[tuple[str, str], ...]) -> bool:
        """A 404 that must not mirror: a versioned bucket's delete marker, or a tombstone. The
        store's own 404 then goes to the client, and the origin is not asked."""
        if any(k.lower() == "x-amz-delete-marker" and v.strip().lower() == "true" for k, v in store_headers):
            why = "delete-marker"
        elif self._deletes_stick and await self._is_tombstoned(ref):
            why = "deleted"
        else:
            return False
        self._record(flow, Decision(ref.bucket, ref.key, "mirror", rule.RuleNumber, outcome=why, store_status=404,
                                    detail="deleted through the proxy: not mirrored" if why == "deleted" else
                                    "the store has a delete marker: not mirrored"))
        return True

    def _origin_request(self, flow: http.HTTPFlow, ref: s3.ObjectRef, rule: RoutingRule) -> OriginRequest | None:
        """What to ask the origin; None (decided and logged) for a key that cannot be mirrored."""
        try:
            return build_request(rule, ref.key, flow.request)
        except UnsafeKey as e:
            logger.warning("bucket %s, RuleNumber %d: not mirrored: %s", ref.bucket, rule.RuleNumber, e)
            self._record(flow, Decision(ref.bucket, ref.key, "mirror", rule.RuleNumber, "unsafe-key", detail=str(e),
                                        store_status=404))
            return None

    async def _store_status(self, flow: http.HTTPFlow, response: http.Response, ref: s3.ObjectRef) -> int | None:
        """The store's status as the rules see it (addon.storeanswer), from the store's answer
        or, for a replayed flow the recording answered itself, from its recorded decision.
        None: no rule may act on the answer."""
        if not flow.live and (recorded := storeanswer.recorded_status(flow.metadata.get(RECORDED_KEY))):
            return recorded
        body = response.get_content(strict=False) or b""
        unrecorded = flow.is_replay == "response" and not response.raw_content
        status = storeanswer.rules_status(flow.request.method, response.status_code, body, unrecorded_replay=unrecorded)
        if storeanswer.may_hide_a_miss(response.status_code, body, self._403_is_miss):
            if not self._acts(flow):
                return 404  # a replay cannot ask the store; it assumes the object was missing
            return await self._403_status(self._endpoint(flow.request), ref)
        return status

    async def _403_status(self, endpoint: str, ref: s3.ObjectRef) -> int:
        """403 AccessDenied counts as a miss once the proxy's own HEAD finds no object; a
        store that cannot say keeps its 403."""
        try:
            present = await asyncio.to_thread(store_has, shared_s3_client(endpoint), ref.bucket, ref.key)
        except Exception as e:
            logger.warning("cannot ask the store about s3://%s/%s: %s", ref.bucket, ref.key, e)
            return 403
        return 403 if present else 404

    # the pieces ------------------------------------------------------------------------------

    def _object(self, flow: http.HTTPFlow) -> s3.ObjectRef | None:
        return s3.object_ref(flow.request, self.vhost_domains)

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
        return self._s3_endpoint or store_endpoint(request, self.vhost_domains)

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

    def done(self) -> asyncio.Task[None]:
        # Synchronous on purpose: mitmproxy calls done() synchronously on script reload,
        # so an async def would silently never run there. The returned task is awaited
        # by mitmdump at shutdown.
        timeout = parse_seconds("backorigin_shutdown_timeout", ctx.options.backorigin_shutdown_timeout)
        return asyncio.ensure_future(self._shutdown(timeout))

    def _serve_metrics(self, port: int | None, host: str) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
            self.mirror.on_fetched = lambda result, seconds: None
        if port is None:
            return
        try:
            self.metrics = metrics = Metrics(port, host)
        except OSError as e:
            raise exceptions.OptionsError(f"backorigin_metrics_port: cannot listen on {host}:{port}: {e.strerror}") from None
        collector = AddonCollector(AddonState(
            self.stats, lambda: dict(self.mirror.writeback.outcomes), lambda: self.mirror.writeback.pending,
            lambda: self.mirror.writeback.spool.directory, lambda: sum(1 for _ in self.tombstones),
        ))
        metrics.add(collector)

        def fetched(result: OriginResult, seconds: float) -> None:
            metrics.fetch_seconds.observe(seconds)
            if kind := origin_error_kind(result):
                collector.errors[kind] = collector.errors.get(kind, 0) + 1

        self.mirror.on_fetched = fetched

    async def _shutdown(self, timeout: float) -> None:
        if self.metrics is not None:
            self.metrics.close()
        await self.listings.aclose()
        await self.server.stop()
        await self.probe.aclose()
        await self.mirror.shutdown(timeout)

