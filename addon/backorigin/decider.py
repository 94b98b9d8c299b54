"""What a GET or HEAD of an object gets, decided in one place: before the store is asked (a
redirect rule without a status condition, or a rule that waits for the store's answer), and once
the store answered, whoever asked it (the proxy's own probe in the request hook, mitmproxy's
forwarding, a recording). BackOrigin's request and response hooks only adapt mitmproxy's flow to
it and act on the plan (rules.plan.plan_get, which the sweep, verify and the listing ask too).

A hit costs no coroutine: when no rule of the bucket may act on the store's status the plan comes
at once; only a 404 (a tombstone may be asked) and a 403 looked behind are awaited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mitmproxy import http

from backorigin.context import Context
from backorigin.decision import RECORDED_KEY
from backorigin.miss.probe import StoreProbe
from backorigin.rules import plan
from backorigin.rules.plan import Act, GetPlan, plan_get
from backorigin.s3.addressing import ObjectRef

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Decided:
    plan: GetPlan
    status: int | None = None  # the store's status as the rules read it; None: no rule may act on the answer


class Decider:
    def __init__(self, context: Context, writing: Callable[[http.HTTPFlow, ObjectRef], bool],
                 is_deleted: Callable[[ObjectRef], Awaitable[bool]]) -> None:
        """`writing(flow, ref)`: the key has a write the origin has not had yet (write-through);
        `is_deleted(ref)`: the key was deleted through the proxy (its tombstone)."""
        self.context = context
        self.writing = writing
        self.is_deleted = is_deleted
        self.mirror_heads = True  # backorigin_head_on_miss=object
        self.denied_is_miss = False  # backorigin_403_is_miss

    def before_store(self, flow: http.HTTPFlow, ref: ObjectRef) -> GetPlan:
        return plan_get(self.context.rulebook, ref, flow.request, None, mirror_heads=self.mirror_heads)

    def after_store(self, flow: http.HTTPFlow, ref: ObjectRef, status: int, body: bytes, headers: Callable[[], Headers],
                    unrecorded_replay: bool = False) -> Decided | Awaitable[Decided]:
        """Once the store answered `status` with `body` (of a 403 or 404; the rest need none) and
        `headers()`: at once, or awaited (see the module). A replayed flow the recording answered
        itself is decided on the store's status its recorded decision kept."""
        if not flow.live and (recorded := plan.recorded_status(flow.metadata.get(RECORDED_KEY))):
            return self._with_status(flow, ref, recorded, headers)
        if plan.may_hide_a_miss(status, body, self.denied_is_miss):
            return self._looked_behind(flow, ref, headers)
        read = plan.rules_status(flow.request.method, status, body, unrecorded_replay=unrecorded_replay)
        return Decided(GetPlan(Act.STORE)) if read is None else self._with_status(flow, ref, read, headers)

    def _with_status(self, flow: http.HTTPFlow, ref: ObjectRef, status: int,
                     headers: Callable[[], Headers]) -> Decided | Awaitable[Decided]:
        if not self.context.rulebook.may_act_on(ref.bucket, status):
            return Decided(GetPlan(Act.STORE), status)
        if status == 404:
            return self._after_404(flow, ref, headers)
        return Decided(self._plan(flow, ref, status, headers, deleted=False), status)

    async def _after_404(self, flow: http.HTTPFlow, ref: ObjectRef, headers: Callable[[], Headers]) -> Decided:
        deleted = self.writing(flow, ref) or await self.is_deleted(ref)
        return Decided(self._plan(flow, ref, 404, headers, deleted), 404)

    async def _looked_behind(self, flow: http.HTTPFlow, ref: ObjectRef, headers: Callable[[], Headers]) -> Decided:
        """A 403 AccessDenied: 404 once the proxy's own HEAD finds no object (a flow that does not
        act cannot ask the store: it assumes the object was missing)."""
        if not self.context.acts(flow):
            status = 404
        else:
            endpoint = self.context.endpoint(flow.request)
            status = await StoreProbe.denied_status(endpoint, ref) if endpoint else 403
        found = self._with_status(flow, ref, status, headers)
        return found if isinstance(found, Decided) else await found

    def _plan(self, flow: http.HTTPFlow, ref: ObjectRef, status: int, headers: Callable[[], Headers], deleted: bool) -> GetPlan:
        return plan_get(self.context.rulebook, ref, flow.request, status, mirror_heads=self.mirror_heads,
                        delete_marker=plan.is_delete_marker(headers()), deleted=deleted)


async def settled(decided: Decided | Awaitable[Decided]) -> Decided:
    return decided if isinstance(decided, Decided) else await decided
