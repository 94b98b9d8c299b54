"""pytest collects the commands of README.md and docs/*.md as tests (Sybil; see tests/docs_support.py),
and hands out the longest files first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sybil import Sybil

from tests.docs_support import BlockParser, DirectiveParser, teardown

pytest_collect_file = Sybil(
    parsers=[DirectiveParser(), BlockParser()],
    patterns=["README.md", "docs/*.md"],
    teardown=teardown,
).pytest()

ROOT = Path(__file__).parent
# Seconds each long file took in a whole run (files under 20 s are left out). `make test` gives a
# worker one file at a time (--dist loadfile) in collection order: longest first, so that no long
# file starts last and keeps one worker busy while the others have nothing left to do.
DURATIONS = json.loads((ROOT / "tests" / "durations.json").read_text())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def seconds(item: pytest.Item) -> int:
        return DURATIONS.get(item.path.relative_to(ROOT).as_posix(), 0)

    items.sort(key=seconds, reverse=True)  # stable: the tests of a file keep their order
