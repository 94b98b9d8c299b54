"""What a GET or HEAD of an object does under the rules: `plan_get`, the one answer that the
proxy's hooks, the sweep (backfill), verify and the merged listing all ask for, so they cannot
disagree. Pure: the rules, the request and what the store said in; a `GetPlan` out.

The order is fixed: the first rule (by RuleNumber) whose conditions hold, the request's and the
store's status; for a Mirror rule, then a delete marker, then a tombstone, then a key that
cannot be appended to MirrorURL. The store's answer is read for the rules by `rules_status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mitmproxy import http

from backorigin.decision import Outcome
from backorigin.rules.model import RoutingRule, RuleBook, RulesError
from backorigin.rules.targets import OriginRequest, UnsafeKey, build_request
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import error_code_of


class Act(Enum):
    STORE = "store"  # no rule acts: the store's answer stands (or, before it is asked, mitmproxy asks it)
    ASK_STORE = "ask-store"  # a rule waits for the store's status: ask the store first
    REDIRECT = "redirect"  # answer with the rule's 3xx
    MIRROR = "mirror"  # fetch from the origin
    KEEP_404 = "keep-404"  # a Mirror rule matches, but the key is not mirrored: the store's 404 stands


@dataclass(frozen=True)
class GetPlan:
    act: Act
    rule: RoutingRule | None = None
    origin: OriginRequest | None = None  # MIRROR: what to ask the origin
    outcome: Outcome | None = None  # KEEP_404: why (deleted, delete-marker, unsafe-key)
    detail: str = ""


def plan_get(
    book: RuleBook, ref: ObjectRef, request: http.Request, store_status: int | None, *, mirror_heads: bool = True,
    delete_marker: bool = False, deleted: bool = False,
) -> GetPlan:
    """What `request` (a GET or HEAD of `ref`) does. `store_status` is the store's status as the
    rules see it (`rules_status`), or None before the store is asked: then only a redirect rule
    without a status condition decides, unless an earlier rule needs that status. `mirror_heads`:
    a HEAD of a miss is mirrored (backorigin_head_on_miss=object); `delete_marker`: the store's 404
    carries x-amz-delete-marker; `deleted`: the key has a tombstone."""
    method, header = request.method, request.headers.get
    if store_status is None:
        rule = book.first_request_match(ref.bucket, ref.key, method, header, mirror_heads)
        if rule is None:
            return GetPlan(Act.STORE)
        return GetPlan(Act.REDIRECT, rule) if rule.status_condition is None else GetPlan(Act.ASK_STORE, rule)
    rule = book.decide_after_store(ref.bucket, ref.key, method, header, store_status, mirror_heads)
    if rule is None:
        return GetPlan(Act.STORE)
    if not rule.Redirect.is_mirror:
        return GetPlan(Act.REDIRECT, rule)
    if delete_marker:
        return GetPlan(Act.KEEP_404, rule, outcome=Outcome.DELETE_MARKER, detail="the store has a delete marker: not mirrored")
    if deleted:
        return GetPlan(Act.KEEP_404, rule, outcome=Outcome.DELETED, detail="deleted through the proxy: not mirrored")
    try:
        origin = build_request(rule, ref.key, request)
    except UnsafeKey as e:
        return GetPlan(Act.KEEP_404, rule, outcome=Outcome.UNSAFE_KEY, detail=str(e))
    return GetPlan(Act.MIRROR, rule, origin)


def refuse_private_origins(book: RuleBook) -> None:
    """backorigin_403_is_miss answers anyone the store denies (AccessDenied) with the origin's
    object: with a rule that reaches a private origin (MirrorAuth signs its requests, or
    MirrorHeaders.Set sends a token) that is a private origin's object, so it must be meant."""
    private = [f'bucket "{bucket}": RuleNumber {rule.RuleNumber}: field {field}'
               for bucket, rules in book.entries() for rule in rules if rule.Redirect.is_mirror
               for field in _private_fields(rule)]
    if private:
        raise RulesError(
            f"{book.source}: {'; '.join(private)}: with backorigin_403_is_miss, anyone the store denies would get this "
            "private origin's objects; set backorigin_403_is_miss_private_origins=true if that is meant"
        )


def _private_fields(rule: RoutingRule) -> list[str]:
    """The fields of a Mirror rule that let it reach an origin others cannot."""
    fields = ["Redirect.MirrorAuth"] if rule.Redirect.MirrorAuth is not None else []
    return fields + [f"Redirect.MirrorHeaders.Set ({header.Key})" for header in rule.Redirect.MirrorHeaders.Set]


def rules_tried(book: RuleBook, ref: ObjectRef, request: http.Request, store_status: int | None,
                mirror_heads: bool = True) -> list[str]:
    """The bucket's rules in order up to the first that acts, each with the condition that did
    not hold (RoutingRule.unmet): why a request went to the rule it went to. Said only for flows
    with a decision (the mitmweb view), so the planner's own path does not pay for the words."""
    tried = []
    for rule in book.rules_for(ref.bucket):
        why = rule.unmet(ref.key, request.method, request.headers.get, store_status, mirror_heads)
        tried.append(f"rule {rule.RuleNumber}: {why or 'every condition holds: this rule acts'}")
        if why is None:
            break
    return tried


def covered_by_mirror(book: RuleBook, ref: ObjectRef) -> bool:
    """Whether a Mirror rule of the bucket covers the key: the keys whose deletes leave
    tombstones, and so the only keys a tombstone can hide."""
    return covering_mirror(book, ref) is not None


def covering_mirror(book: RuleBook, ref: ObjectRef) -> RoutingRule | None:
    """The first Mirror rule of the bucket whose prefix and suffix hold for the key (header
    conditions aside, since another request for the key may carry other headers)."""
    return next((rule for rule in book.rules_for(ref.bucket) if rule.Redirect.is_mirror
                 and ref.key.startswith(rule.Condition.KeyPrefixEquals) and ref.key.endswith(rule.Condition.KeySuffixEquals)),
                None)


def covering_rule_number(book: RuleBook, ref: ObjectRef) -> int | None:
    rule = covering_mirror(book, ref)
    return rule.RuleNumber if rule is not None else None


# the store's answer, as the rules read it ----------------------------------------------------


def shows_object(status: int) -> bool:
    """The store has the object: it served it, or judged a condition or range against it."""
    return 200 <= status < 300 or status in (304, 412, 416)


def rules_status(method: str, status: int, body: bytes, unrecorded_replay: bool = False) -> int | None:
    """The store's status as the rules see it; None when no rule may act on it. A GET's 404
    counts only as NoSuchKey (not NoSuchBucket); a HEAD's 404 has no body to tell, nor has the
    empty 404 that `--server-replay` gives a request it has no recording of."""
    if status == 404 and method == "GET" and not unrecorded_replay and error_code_of(body) != "NoSuchKey":
        return None
    return status


def may_hide_a_miss(status: int, body: bytes, denied_is_miss: bool) -> bool:
    """A 403 AccessDenied that backorigin_403_is_miss asks the proxy to look behind (stores
    answer 403, not 404, to callers without ListBucket). Other 403s (a bad signature) never are."""
    return denied_is_miss and status == 403 and error_code_of(body) == "AccessDenied"


def is_delete_marker(headers: tuple[tuple[str, str], ...]) -> bool:
    return any(k.lower() == "x-amz-delete-marker" and v.strip().lower() == "true" for k, v in headers)


def recorded_status(recorded: Mapping[str, Any] | None) -> int | None:
    """The store's status kept in a replayed flow's recorded decision. Recordings made before
    store_status was kept say only that a mirror acted, which it did only on a 404."""
    if not recorded:
        return None
    return recorded.get("store_status") or (404 if recorded.get("action") == "mirror" else None)
