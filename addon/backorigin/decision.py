"""What backorigin decided for a flow, in a form people and tools can read: a marker and a
one-line comment in mitmproxy's console and mitmweb, `flow.metadata["backorigin"]` (plain
values, so `-w` keeps it and `~meta` filters it), an optional `x-backorigin` header, and
counters for `backorigin.stats` and the metrics. Every decision goes through `Recorder`.

The comment leads with the outcome (`mirrored · rule 2 · ...`, `424 origin unreachable · rule 2`),
so a narrow column still says what happened. Markers are single letters, which mitmproxy shows
as they are (a shortcode needs an emoji font): M a mirror, R a redirect, X a failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from mitmproxy import http

METADATA_KEY = "backorigin"
RECORDED_KEY = "backorigin_recorded"  # a replayed flow's decision from the recording
DEBUG_HEADER = "x-backorigin"


class Action(StrEnum):
    MIRROR = "mirror"
    EXTERNAL = "external"
    ALICDN = "alicdn"
    LOOP = "loop"


class Outcome(StrEnum):
    MIRRORED = "mirrored"  # the origin's object went to the client (and, unless said otherwise, to the store)
    ORIGIN_404 = "origin-404"  # the origin lacks it too: the store's 404
    ORIGIN_REDIRECT = "origin-redirect"  # MirrorFollowRedirect false: the origin's 3xx went to the client
    TRANSPARENT = "transparent"  # a TransparentMirrorResponseCodes answer went to the client
    MIRROR_FAILED = "mirror-failed"  # 424 MirrorFailed
    SLOWED_DOWN = "slowed-down"  # 503 SlowDown: the origin's fetches and their queue were all taken
    UNSAFE_KEY = "unsafe-key"  # a key that cannot be appended to MirrorURL: the store's 404
    DELETED = "deleted"  # deleted through the proxy (a tombstone): the store's 404
    DELETE_MARKER = "delete-marker"  # a versioned bucket's delete marker: the store's 404
    REDIRECTED = "redirected"  # a redirect rule's 3xx
    LOOP = "loop"  # an origin fetch that came back into the proxy: 424
    BROKEN = "broken"  # the answer broke off (the client left, or the origin's body did)
    DRY_RUN = "dry-run"  # decided only: backorigin_dry_run
    REPLAYED = "replayed"  # decided only: a flow read from a file


FAILED_OUTCOMES = frozenset({Outcome.MIRROR_FAILED, Outcome.LOOP, Outcome.BROKEN})
MARKERS = {Action.MIRROR: "M", "redirect": "R", "failed": "X"}
# the comment's first words, per outcome ({status}: the origin's; {verb}: mirror or redirect)
HEADLINES = {
    Outcome.MIRRORED: "mirrored",
    Outcome.ORIGIN_404: "origin 404",
    Outcome.ORIGIN_REDIRECT: "origin {status} passed on",
    Outcome.TRANSPARENT: "origin {status} passed on",
    Outcome.MIRROR_FAILED: "424 {failure}",
    Outcome.SLOWED_DOWN: "503 origin busy",
    Outcome.UNSAFE_KEY: "404 not mirrored (unsafe key)",
    Outcome.DELETED: "404 deleted through the proxy",
    Outcome.DELETE_MARKER: "404 delete marker",
    Outcome.REDIRECTED: "redirected",
    Outcome.LOOP: "424 loop",
    Outcome.BROKEN: "broken off",
    Outcome.DRY_RUN: "dry run: would {verb}",
    Outcome.REPLAYED: "replayed: would {verb}",
}


@dataclass
class Decision:
    bucket: str
    key: str
    action: Action
    rule: int | None = None
    outcome: Outcome | None = None
    origin_url: str = ""
    location: str = ""
    origin_status: int | None = None
    bytes: int = 0
    writeback: str = ""  # queued, or none (<why>)
    detail: str = ""
    store_status: int | None = None  # what the store answered, when the rule waited for it
    failure: str = ""  # a failed mirror's reason in a few words: "origin unreachable", "origin 500"
    rules_tried: list[str] = field(default_factory=list)  # each rule up to this one, and what did not hold

    def headline(self) -> str:
        """What happened, in a few words."""
        if self.outcome is None:
            return str(self.action)
        verb = "mirror" if self.action == Action.MIRROR else "redirect"
        failure = self.failure or (f"origin {self.origin_status}" if self.origin_status else "mirror failed")
        return HEADLINES[self.outcome].format(status=self.origin_status, verb=verb, failure=failure)

    def comment(self) -> str:
        """The flow list's line: the outcome first, then the rule, the URL, the bytes, the write-back."""
        parts = [self.headline(), f"rule {self.rule}" if self.rule else "", self.location or self.origin_url,
                 f"{self.bytes} bytes" if self.bytes else "", f"write-back {self.writeback}" if self.writeback else ""]
        return " · ".join(p for p in parts if p)

    def marker(self) -> str:
        if self.outcome in FAILED_OUTCOMES:
            return MARKERS["failed"]
        return MARKERS[Action.MIRROR] if self.action == Action.MIRROR else MARKERS["redirect"]

    def as_metadata(self) -> dict:
        """Plain values only: mitmproxy's flow files keep str, not str subclasses, and only text
        that is UTF-8 (a key's bytes that are not show as \\xNN)."""
        return {k: str(v) if isinstance(v, StrEnum) else printable(v) if isinstance(v, str) else v for k, v in asdict(self).items()}


def printable(text: str) -> str:
    """Text as UTF-8 can carry it: bytes of a key that are not UTF-8 (kept surrogate-escaped) as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def set_aside_recorded(flow: http.HTTPFlow) -> dict | None:
    """A replayed flow arrives with the recording's decision (and its answer is the addon's,
    not the store's). Move that decision aside, so what the flow shows afterwards is only
    what the current rules decide; return it."""
    recorded = flow.metadata.pop(METADATA_KEY, None)
    if recorded is not None:
        flow.metadata[RECORDED_KEY] = recorded
        flow.comment = ""
        flow.marked = ""
    return flow.metadata.get(RECORDED_KEY)


def add_debug_header(response: http.Response, decision: Decision) -> None:
    response.headers[DEBUG_HEADER] = f"rule={decision.rule} action={decision.action} outcome={decision.outcome or ''}"


_STATUS_KINDS = {Outcome.MIRRORED: "mirrored", Outcome.ORIGIN_404: "answered_404", Outcome.REDIRECTED: "redirected"}


class Stats:
    """Counters behind `backorigin.stats` and the metrics."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.by_decision: Counter[tuple[str, str]] = Counter()
        self.served: Counter[str] = Counter()  # GETs under rules: "store" (a hit) or "origin" (a mirrored miss)

    def record(self, decision: Decision) -> None:
        outcome = str(decision.outcome or "")
        self.by_decision[(str(decision.action), outcome)] += 1
        self.counts[f"decisions.{decision.action}"] += 1
        self.counts[f"outcomes.{outcome}"] += 1
        self.counts["bytes_from_origin"] += decision.bytes
        if decision.action == Action.MIRROR:
            self.counts["misses"] += 1
        status_kind = _STATUS_KINDS.get(decision.outcome) if decision.outcome else None
        if status_kind:
            self.counts[status_kind] += 1
        if decision.outcome in FAILED_OUTCOMES:
            self.counts["answered_424"] += 1


class Recorder:
    """Where every decision goes: onto its flow, into the counters, into an optional header, and
    to the listeners (the miss ledger). A flow that is only decided (a dry run, a replay) says so."""

    def __init__(self, explain: Callable[[http.HTTPFlow, Decision], list[str]] | None = None,
                 listeners: Sequence[Callable[[Decision], None]] = ()) -> None:
        """`explain(flow, decision)`: the rules tried before a decision's rule, and why each did not
        act (rules.plan.rules_tried); `listeners`: told of every decision (the miss ledger)."""
        self.stats = Stats()
        self.debug_header = False
        self.listeners = list(listeners)
        self.explain = explain

    def served_by_store(self, flow: http.HTTPFlow, rule: int | None) -> None:
        """The store answered a request for a key that Mirror rule `rule` covers: a GET counts
        towards the store's share, and the flow says why the rule did not act."""
        if rule is not None and flow.request.method == "GET":
            self.stats.served["store"] += 1
            flow.comment = f"store hit · rule {rule} covers the key; the store has it"

    def record(self, flow: http.HTTPFlow, decision: Decision, acted: bool, header: bool = True) -> None:
        if not acted and decision.action != Action.LOOP:
            decision = replace(decision, outcome=Outcome.DRY_RUN if flow.live else Outcome.REPLAYED)
        if self.explain is not None and decision.rule is not None and not decision.rules_tried:
            decision = replace(decision, rules_tried=self.explain(flow, decision))
        flow.metadata[METADATA_KEY] = decision.as_metadata()
        flow.comment = printable(decision.comment())
        flow.marked = decision.marker()
        if header and self.debug_header and flow.response is not None:
            add_debug_header(flow.response, decision)
        self.stats.record(decision)
        for listener in self.listeners:
            listener(decision)
