"""backorigin.decider, the one place that decides what a GET/HEAD of an object gets: a hit is
decided at once (no coroutine on the hot path); a 404 is awaited (its tombstone is asked)."""

from __future__ import annotations

import inspect

from mitmproxy.test import taddons

from backorigin.context import Context
from backorigin.decider import Decided, Decider, settled
from backorigin.rules.plan import Act
from backorigin.rules.rulesfile import RulesFile
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import error_body
from tests.addon.conftest import store_answer


def decider_over(rules_file, deleted: set[str]) -> Decider:
    async def is_deleted(ref: ObjectRef) -> bool:
        return ref.key in deleted

    rules = RulesFile()
    with taddons.context(rules) as tctx:
        tctx.configure(rules, backorigin_rules=str(rules_file))
    return Decider(Context(rules), lambda flow, ref: False, is_deleted)


def no_headers() -> tuple[tuple[str, str], ...]:
    return ()


async def test_a_hit_is_decided_at_once_and_a_miss_is_awaited(rules_file):
    decider = decider_over(rules_file, deleted={"gone"})
    ref = ObjectRef("mirror-bucket", "k")
    hit = decider.after_store(store_answer(ref.bucket, ref.key, 200, code=""), ref, 200, b"", no_headers)
    assert isinstance(hit, Decided) and hit.plan.act is Act.STORE
    flow = store_answer(ref.bucket, ref.key)
    pending = decider.after_store(flow, ref, 404, error_body("NoSuchKey", "m", ref, "r"), no_headers)
    assert inspect.isawaitable(pending)
    miss = await settled(pending)
    assert (miss.plan.act, miss.status) == (Act.MIRROR, 404)
    gone = ObjectRef("mirror-bucket", "gone")
    deleted = await settled(decider.after_store(store_answer(gone.bucket, gone.key), gone, 404,
                                                error_body("NoSuchKey", "m", gone, "r"), no_headers))
    assert deleted.plan.act is Act.KEEP_404


def test_a_missing_bucket_is_the_stores_answer(rules_file):
    decider = decider_over(rules_file, deleted=set())
    ref = ObjectRef("absent-bucket", "k")
    decided = decider.after_store(store_answer(ref.bucket, ref.key), ref, 404, error_body("NoSuchBucket", "m", ref, "r"),
                                  no_headers)
    assert isinstance(decided, Decided) and decided.plan.act is Act.STORE and decided.status is None
