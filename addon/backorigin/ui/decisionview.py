"""A mitmproxy content view named `backorigin`: what backorigin decided for a flow.

The flow list shows the decision as a one-line comment; this view shows it whole (what
happened, the rule, and why: each rule tried before it with the condition that did not hold;
then the origin URL or the Location sent, what origin and store answered, the bytes fetched,
the write-back state), one key/value line each, read from `flow.metadata["backorigin"]`. Long
values wrap at WIDTH characters: mitmweb shows a view's lines as they are, without wrapping.
It is the default ("auto") view of the messages of a flow that has a decision (except a
request that carries a body), in mitmweb and in the console, and never of any other flow.
mitmproxy asks no view about a body it did not keep: the Response tab of a streamed miss says
"content missing"; the Request tab shows the decision.

mitmproxy keeps content views in a process-wide list, not per addon, so the view is added
in `load` and removed in `done` by the small `DecisionView` addon; both tolerate what a
script reload leaves behind (a view of the same name from the previous load of this module).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from mitmproxy import contentviews, flow, http
from mitmproxy.contentviews.base import TViewLine, TViewResult

from backorigin.decision import METADATA_KEY, RECORDED_KEY, Decision

VIEW_NAME = "backorigin"
# Above every view mitmproxy ships (their best is 1.0), so "auto" picks this one.
DECISION_PRIORITY = 2.0
NO_DECISION = "backorigin made no decision for this flow"
WIDTH = 100  # characters of a value's line; longer values continue on the next lines


def decision_of(f: flow.Flow | None, key: str = METADATA_KEY) -> Mapping[str, Any] | None:
    """The decision recorded on a flow, or None. Flows read back with -r carry it as a
    plain dict; anything else there is not ours to show."""
    if f is None:
        return None
    found = f.metadata.get(key)
    return found if isinstance(found, Mapping) and found else None


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def decision_lines(decision: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The decision as (key, value) pairs, in the order people read it; a long value goes on
    over several lines (the key on the first)."""
    outcome = decision.get("outcome")
    pairs = [("what happened", _headline(decision)), ("rule", _text(decision.get("rule")))]
    tried = decision.get("rules_tried") or []
    pairs += [("rules tried" if i == 0 else "", str(line)) for i, line in enumerate(tried)]
    pairs += [
        ("action", _text(decision.get("action"))),
        ("outcome", _text(outcome)),
        ("bucket", _text(decision.get("bucket"))),
        ("key", _text(decision.get("key"))),
    ]
    if decision.get("location"):
        pairs.append(("Location", str(decision["location"])))
    if decision.get("origin_url") or not decision.get("location"):
        pairs.append(("origin URL", _text(decision.get("origin_url"))))
    pairs += [
        ("origin status", _text(decision.get("origin_status"))),
        ("store status", _text(decision.get("store_status"))),
        ("bytes", _text(decision.get("bytes"))),
        ("write-back", _text(decision.get("writeback"))),
    ]
    if decision.get("detail"):
        pairs.append(("detail", str(decision["detail"])))
    return [(key if i == 0 else "", part) for key, value in pairs for i, part in enumerate(_wrapped(value))]


def _headline(decision: Mapping[str, Any]) -> str:
    """The comment's first words, from the plain values a recording keeps (Decision.headline)."""
    try:
        return Decision(**{k: v for k, v in decision.items() if k in Decision.__dataclass_fields__}).headline()
    except (TypeError, ValueError, KeyError):  # a recording of another version: say what it has
        return _text(decision.get("outcome"))


def formatted(pairs: list[tuple[str, str]]) -> list[TViewLine]:
    """mitmproxy's key/value layout (`format_pairs`), a value's continuation lines without a key."""
    width = max((len(key) for key, _ in pairs), default=0) + 2
    return [[("header", f"{key}:".ljust(width) if key else " " * width), ("text", value)] for key, value in pairs]


def _wrapped(value: str) -> list[str]:
    return textwrap.wrap(value, WIDTH, break_long_words=True, break_on_hyphens=False) or [value]


class ViewBackorigin(contentviews.View):
    name = VIEW_NAME

    def __call__(
        self,
        data: bytes,
        *,
        flow: flow.Flow | None = None,
        **metadata: Any,
    ) -> TViewResult:
        decision = decision_of(flow)
        if decision is None:
            lines: list[TViewLine] = [[("text", NO_DECISION)]]
            recorded = decision_of(flow, RECORDED_KEY)
            if recorded is not None:  # a replayed flow: the rules in force decided nothing
                lines.append([("text", "")])
                lines.append([("text", "the recording's decision:")])
                lines += formatted(decision_lines(recorded))
            return "backorigin: no decision", iter(lines)
        return f"backorigin: {_headline(decision)}", iter(formatted(decision_lines(decision)))

    def render_priority(
        self,
        data: bytes,
        *,
        flow: flow.Flow | None = None,
        http_message: http.Message | None = None,
        **metadata: Any,
    ) -> float:
        if decision_of(flow) is None:
            return 0
        if isinstance(flow, http.HTTPFlow) and http_message is flow.request and data:
            return 0  # a request that carries a body keeps its own view
        return DECISION_PRIORITY


class DecisionView:
    """Adds the `backorigin` content view while loaded, removes it when done.

    Idempotent both ways: a reloaded script (or a test) may add a view that an earlier
    instance already added, or be done with one that is already gone."""

    def __init__(self) -> None:
        self.view = ViewBackorigin()

    def load(self, loader: Any) -> None:
        for view in [v for v in contentviews.views if v.name == VIEW_NAME and v is not self.view]:
            contentviews.remove(view)  # a previous load of this module that was never done
        if self.view not in contentviews.views:
            contentviews.add(self.view)

    def done(self) -> None:
        if self.view in contentviews.views:
            contentviews.remove(self.view)

