"""pytest collects the commands of README.md and docs/*.md as tests (Sybil; see tests/docs_support.py)."""

from sybil import Sybil

from tests.docs_support import BlockParser, DirectiveParser, teardown

pytest_collect_file = Sybil(
    parsers=[DirectiveParser(), BlockParser()],
    patterns=["README.md", "docs/*.md"],
    teardown=teardown,
).pytest()
