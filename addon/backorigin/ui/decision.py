"""What backorigin decided for a flow, in a form people and tools can read: a marker and a
one-line comment in mitmproxy's console and mitmweb, `flow.metadata["backorigin"]` (plain
values, so `-w` keeps it and `~meta` filters it), an optional `x-backorigin` header, and
counters for `backorigin.stats`."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from mitmproxy import http

METADATA_KEY = "backorigin"
RECORDED_KEY = "backorigin_recorded"  # a replayed flow's decision from the recording
DEBUG_HEADER = "x-backorigin"
MARKERS = {"mirror": ":arrows_counterclockwise:", "redirect": ":arrow_right_hook:", "failed": ":warning:"}
FAILED_OUTCOMES = frozenset({"mirror-failed", "loop", "broken"})


@dataclass
class Decision:
    bucket: str
    key: str
    action: str  # mirror, redirect, alicdn, loop
    rule: int | None = None
    outcome: str = ""  # mirrored, origin-404, origin-redirect, transparent, mirror-failed, unsafe-key,
    #                    redirected, loop, broken (the answer broke off), dry-run, replayed
    origin_url: str = ""
    location: str = ""
    origin_status: int | None = None
    bytes: int = 0
    writeback: str = ""  # queued, or none (<why>)
    detail: str = ""
    store_status: int | None = None  # what the store answered, when the rule waited for it

    def comment(self) -> str:
        target = self.location or self.origin_url
        parts = [f"backorigin: rule {self.rule}" if self.rule else "backorigin:", self.action, self.outcome]
        if target:
            parts.append(target)
        if self.origin_status is not None:
            parts.append(f"origin {self.origin_status}")
        if self.bytes:
            parts.append(f"{self.bytes} bytes")
        if self.writeback:
            parts.append(f"write-back {self.writeback}")
        if self.detail:
            parts.append(f"({self.detail})")
        return " ".join(p for p in parts if p)

    def marker(self) -> str:
        if self.outcome in FAILED_OUTCOMES:
            return MARKERS["failed"]
        return MARKERS["mirror"] if self.action == "mirror" else MARKERS["redirect"]


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


def annotate(flow: http.HTTPFlow, decision: Decision, header: bool) -> None:
    flow.metadata[METADATA_KEY] = asdict(decision)
    flow.comment = decision.comment()
    flow.marked = decision.marker()
    if header and flow.response is not None:
        add_debug_header(flow.response, decision)


def add_debug_header(response: http.Response, decision: Decision) -> None:
    response.headers[DEBUG_HEADER] = f"rule={decision.rule} action={decision.action} outcome={decision.outcome}"


class Stats:
    """Counters behind `backorigin.stats`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.by_decision: Counter[tuple[str, str]] = Counter()
        self.served: Counter[str] = Counter()  # GETs under rules: "store" (a hit) or "origin" (a mirrored miss)

    def record(self, decision: Decision) -> None:
        self.by_decision[(decision.action, decision.outcome)] += 1
        self.counts[f"decisions.{decision.action}"] += 1
        self.counts[f"outcomes.{decision.outcome}"] += 1
        self.counts["bytes_from_origin"] += decision.bytes
        if decision.action == "mirror":
            self.counts["misses"] += 1
        status_kind = {"mirrored": "mirrored", "origin-404": "answered_404", "redirected": "redirected"}.get(decision.outcome)
        if status_kind:
            self.counts[status_kind] += 1
        if decision.outcome in FAILED_OUTCOMES:
            self.counts["answered_424"] += 1
