"""The mirror's fills: one origin GET per object."""

from __future__ import annotations

from backorigin.parts import Parts
from backorigin.rules.targets import OriginRequest
from backorigin.s3.addressing import ObjectRef
from tests.support import rule_of


async def test_no_fill_starts_for_an_object_that_landed_meanwhile(tmp_path):
    """A miss that waited (a tombstone check) while the object's write-back landed must not
    fetch the origin again: the store answers it."""
    mirror = Parts.build(own_listeners=lambda: ()).mirror
    mirror.writeback.open(tmp_path / "spool")
    mirror.known.add(("http://store", "b", "k"))
    assert await mirror.start("http://store", ObjectRef("b", "k"), rule_of(), OriginRequest("http://o/k", ())) is None
    assert len(mirror.fills) == 0
    await mirror.origin.aclose()
