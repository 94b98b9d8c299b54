"""Prometheus metrics (opt-in: backorigin_metrics_port, a child addon of BackOrigin), served with
prometheus_client.

Counters the addon keeps anyway (decision.Stats, the write-back's outcomes) are read when
Prometheus scrapes, so the hot path pays nothing for them; only the origin fetch latency is
observed as it happens (a histogram). Each addon instance has its own registry, so a script
reload never registers a metric twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backorigin.decision import Stats
from backorigin.miss.guard import Circuit, OriginGuard
from backorigin.miss.leases import Leases
from backorigin.miss.origin import OriginResult
from backorigin.options import declare, optional_port, read_settings, text
from backorigin.s3.reading import Aside
from backorigin.writeback.proxyspools import OWNER
from backorigin.writeback.supervisor import WriteBackSupervisor
from backorigin.writethrough.supervisor import WriteThroughSupervisor

logger = logging.getLogger(__name__)

FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WRITE_THROUGH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def origin_error_kind(result: OriginResult) -> str | None:
    """How an origin fetch went wrong, for the errors counter; None when it did not."""
    if result.status == 200:
        return None
    if result.failure is not None:
        return str(result.failure)
    if result.status == 404:
        return "not_found"
    return f"status_{(result.status or 0) // 100}xx"


def spool_bytes(directory: Path) -> int:
    """Bytes of the pending write-backs (bodies, manifests, downloads), not the owner's lock file."""
    total = 0
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) and entry.name != OWNER:
            with contextlib.suppress(FileNotFoundError):  # the scrape runs in its own thread: a write-back may land meanwhile
                total += entry.stat().st_size
    return total


@dataclass
class AddonState:
    """What the collector reads at scrape time."""

    stats: Stats
    writeback: WriteBackSupervisor  # its outcomes, pending write-backs, spool (bytes, and those refused for good)
    tombstones: Callable[[], int | None]  # kept as they change; None: shared, not counted
    guard: OriginGuard  # the origins' 404s, limits and circuits (miss.guard)
    leases: Leases  # the turns taken with the fleet's other proxies (miss.leases)
    set_aside: Mapping[str, int]  # live requests forwarded untouched, by reason (backorigin.stores)


@dataclass(eq=False)  # registries key collectors by identity
class AddonCollector(Collector):
    state: AddonState
    errors: dict[str, int] = field(default_factory=dict)

    def collect(self) -> Iterator[Metric]:
        stats = self.state.stats
        requests = CounterMetricFamily("backorigin_requests", "Flows backorigin decided on, by decision and outcome",
                                       labels=["decision", "outcome"])
        for (decision, outcome), count in sorted(stats.by_decision.items()):
            requests.add_metric([decision, outcome], count)
        yield requests
        gets = CounterMetricFamily("backorigin_rule_gets", "GETs of objects under rules, by who served them",
                                   labels=["served_by"])
        for served_by in ("store", "origin"):
            gets.add_metric([served_by], stats.served[served_by])
        yield gets
        total = stats.served["store"] + stats.served["origin"]
        yield GaugeMetricFamily("backorigin_store_share", "Share of GETs under rules that the store served (0..1)",
                                value=stats.served["store"] / total if total else 0.0)
        yield CounterMetricFamily("backorigin_mirrored_bytes", "Bytes fetched from origins for mirrored objects",
                                  value=stats.counts["bytes_from_origin"])
        errors = CounterMetricFamily("backorigin_origin_errors", "Origin fetches that failed, by kind", labels=["kind"])
        for kind, count in sorted(self.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        writebacks = CounterMetricFamily("backorigin_writebacks", "Write-backs that ended, by outcome", labels=["outcome"])
        for outcome, count in sorted(self.state.writeback.outcomes.items()):
            writebacks.add_metric([outcome], count)
        yield writebacks
        yield GaugeMetricFamily("backorigin_writebacks_pending", "Write-backs spooled and not yet stored",
                                value=self.state.writeback.pending)
        yield GaugeMetricFamily("backorigin_spool_bytes", "Bytes in the spool directory (bodies and manifests)",
                                value=spool_bytes(self.state.writeback.spool.directory))
        yield GaugeMetricFamily("backorigin_spool_failed", "Write-backs the store refused for good, kept in spool/failed/",
                                value=self.state.writeback.spool.failed_count())
        if (tombstones := self.state.tombstones()) is not None:
            yield GaugeMetricFamily("backorigin_tombstones", "Keys deleted through a proxy that never mirror again",
                                    value=tombstones)
        aside = CounterMetricFamily("backorigin_requests_set_aside", "Requests forwarded untouched: the proxy could not "
                                    "place them on a named store with a Host it knows, read as the store reads them",
                                    labels=["reason"])
        for reason in Aside:
            aside.add_metric([reason], self.state.set_aside.get(reason, 0))
        yield aside
        yield from guard_metrics(self.state.guard)
        yield from lease_metrics(self.state.leases)


LEASE_OUTCOMES = ("held", "taken_over", "waited", "waited_too_long", "unavailable", "lost")


def lease_metrics(leases: Leases) -> Iterator[Metric]:
    """How misses took turns with the other proxies of the fleet (miss.leases)."""
    turns = CounterMetricFamily("backorigin_leases", "New misses by their turn in the fleet: held (this proxy fetched), "
                                "taken_over (a lease that had run out), waited (another proxy's fill served), "
                                "waited_too_long, unavailable (the store refused the lease), lost (taken over from this "
                                "proxy)", labels=["outcome"])
    for outcome in LEASE_OUTCOMES:
        turns.add_metric([outcome], leases.counts[outcome])
    yield turns
    yield GaugeMetricFamily("backorigin_leases_held", "Leases this proxy holds now (objects it is fetching or storing)",
                            value=len(leases.held))


CIRCUIT_VALUES = {Circuit.CLOSED: 0, Circuit.HALF_OPEN: 1, Circuit.OPEN: 2}


def guard_metrics(guard: OriginGuard) -> Iterator[Metric]:
    """What miss.guard did: origin 404s answered from memory, fetches that waited or were refused,
    each origin host's fetches and circuit."""
    counts = guard.counts
    yield CounterMetricFamily("backorigin_origin_404_remembered_hits", "Misses answered with an origin 404 remembered "
                              "(backorigin_origin_404_ttl), without asking the origin", value=counts["not_found_hits"])
    yield GaugeMetricFamily("backorigin_origin_404_remembered", "Origin 404s remembered now", value=len(guard.not_found))
    yield CounterMetricFamily("backorigin_origin_fetches_queued", "Origin fetches that waited for a free slot "
                              "(backorigin_origin_concurrency)", value=counts["queued"])
    yield CounterMetricFamily("backorigin_origin_fetches_refused", "Misses answered 503 SlowDown: the origin host's "
                              "fetches and queue were all taken", value=counts["refused"])
    yield CounterMetricFamily("backorigin_origin_failed_fast", "Misses that failed at once: the origin host's circuit "
                              "was open", value=counts["failed_fast"])
    running = GaugeMetricFamily("backorigin_origin_fetches_running", "Origin fetches under way, by origin host", labels=["host"])
    waiting = GaugeMetricFamily("backorigin_origin_fetches_waiting", "Misses waiting for an origin fetch slot, by origin host",
                                labels=["host"])
    for host, slots in sorted(guard.slots.items()):
        running.add_metric([host], slots.running)
        waiting.add_metric([host], slots.waiting)
    yield running
    yield waiting
    circuits = GaugeMetricFamily("backorigin_origin_circuit", "Each origin host's circuit for each tenant (a bucket's signed "
                                 "or anonymous clients): 0 closed, 1 half-open, 2 open", labels=["host", "bucket", "client"])
    for (host, (bucket, signed)), breaker in sorted(guard.breakers.items()):
        circuits.add_metric([host, bucket, "signed" if signed else "anonymous"], CIRCUIT_VALUES[breaker.state])
    yield circuits


@dataclass(eq=False)
class WriteThroughCollector(Collector):
    """Write-through (writethrough.supervisor): the backlog, its age, and what the worker did."""

    supervisor: Callable[[], WriteThroughSupervisor | None]

    def collect(self) -> Iterator[Metric]:
        supervisor = self.supervisor()
        if supervisor is None:
            return
        yield GaugeMetricFamily("backorigin_writethrough_pending", "Writes acknowledged through the proxy that the "
                                "origin has not had yet (journal entries)", value=supervisor.pending)
        yield GaugeMetricFamily("backorigin_writethrough_keys_pending", "Keys with a write the origin has not had yet",
                                value=supervisor.keys_pending)
        yield GaugeMetricFamily("backorigin_writethrough_lag_seconds", "Age of the oldest write the origin has not had "
                                "yet (0: none; a rollback is safe once writes stop and this is 0)", value=supervisor.lag())
        synced = CounterMetricFamily("backorigin_writethrough_synced", "Keys brought to the store's state at the origin, "
                                     "by action (put, delete, unchanged)", labels=["action"])
        retries = CounterMetricFamily("backorigin_writethrough_retries", "Syncs that failed and wait to be tried again, by "
                                      "what failed (lane: the origin bucket as a whole; key: that key)", labels=["scope"])
        outcomes = dict(supervisor.outcomes)
        for action in ("put", "delete", "unchanged"):
            synced.add_metric([action], outcomes.get(action, 0))
        for scope in ("lane", "key"):
            retries.add_metric([scope], outcomes.get(f"retry_{scope}", 0))
        yield synced
        yield CounterMetricFamily("backorigin_writethrough_not_utf8", "Writes of keys that are not UTF-8 text, left out "
                                  "of write-through (S3 keys are UTF-8)", value=outcomes.get("not_utf8", 0))
        yield retries


@dataclass(eq=False)
class BackfillCollector(Collector):
    """A running `backorigin backfill`: objects and bytes done of the total, results so far."""

    total: Callable[[], int]
    done: Callable[[], int]
    bytes_read: Callable[[], int]
    results: Callable[[], dict[str, int]]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("backorigin_backfill_objects", "Objects the backfill has to go through", value=self.total())
        yield GaugeMetricFamily("backorigin_backfill_objects_done", "Objects finished, by an earlier run too",
                                value=self.done())
        yield CounterMetricFamily("backorigin_backfill_bytes_read", "Bytes read from origins by this run",
                                  value=self.bytes_read())
        results = CounterMetricFamily("backorigin_backfill_results", "Finished objects by result", labels=["result"])
        for result, count in sorted(self.results().items()):
            results.add_metric([result], count)
        yield results


class Measures:
    """What is observed as it happens, in this addon instance's own registry (a script reload never
    registers a metric twice): origin fetch times and errors (the mirror's `on_fetched`), write-
    through sync times (the write-through's `synced`). Made with the proxy; served by Metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.fetch_seconds = Histogram("backorigin_origin_fetch_seconds", "Origin fetch time, whole body included",
                                       buckets=FETCH_BUCKETS, registry=self.registry)
        self.writethrough_seconds = Histogram(
            "backorigin_writethrough_seconds", "Time from a write's answer to its key's copy at the origin (write-through)",
            buckets=WRITE_THROUGH_BUCKETS, registry=self.registry)
        self.errors: dict[str, int] = {}  # origin fetches that failed, by kind

    def fetched(self, result: OriginResult, seconds: float) -> None:
        self.fetch_seconds.observe(seconds)
        if kind := origin_error_kind(result):
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def synced(self, seconds: float) -> None:
        self.writethrough_seconds.observe(seconds)


class Metrics:
    """The endpoint, serving `measures`' registry (its own when none is given)."""

    def __init__(self, port: int, host: str = "127.0.0.1", measures: Measures | None = None) -> None:
        self.registry = (measures or Measures()).registry
        self._server: WSGIServer | None = None
        self._server, _ = start_http_server(port, host, registry=self.registry)
        self.address = (host, port)  # one of the proxy's own listeners: origin fetches never go there
        logger.info("metrics on http://%s:%d/metrics", host, port)

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass(frozen=True)
class MetricsSettings:
    port: int | None = optional_port(
        "backorigin_metrics_port", "Serve Prometheus metrics on this port (http://HOST:PORT/metrics); off by default.")
    host: str = text("backorigin_metrics_host", "127.0.0.1", "Address the metrics endpoint listens on.")


class MetricsEndpoint:
    """The child addon: serves the proxy's metrics while backorigin_metrics_port is set."""

    def __init__(self, measures: Measures, state: AddonState,
                 writethrough: Callable[[], WriteThroughSupervisor | None]) -> None:
        """`measures`: observed as it happens; `state`: read at scrape time; `writethrough()`: the
        write-through's supervisor, once it has one."""
        self.measures = measures
        self.metrics: Metrics | None = None
        measures.registry.register(AddonCollector(state, measures.errors))
        measures.registry.register(WriteThroughCollector(writethrough))

    def load(self, loader: Loader) -> None:
        declare(MetricsSettings, loader)

    def configure(self, updated: set[str]) -> None:
        if {"backorigin_metrics_port", "backorigin_metrics_host"} & updated:
            settings = read_settings(MetricsSettings, ctx.options)
            self.serve(settings.port, settings.host)

    def serve(self, port: int | None, host: str) -> None:
        self.close()
        if port is None:
            return
        try:
            self.metrics = Metrics(port, host, self.measures)
        except OSError as e:
            raise exceptions.OptionsError(f"backorigin_metrics_port: cannot listen on {host}:{port}: {e.strerror}") from None

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
