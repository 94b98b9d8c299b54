"""A corpus of realistic mistakes in rules files (tests/data/bad-rules/), each refused with
a message that names the file and, for a mistake inside a rule, the bucket and the RuleNumber.

tests/data/bad-rules/expected.json maps each file name to the text that must follow
"<path of the file>: " in the message, so the file, the place and the reason are pinned
together. A file added to the folder without an entry there fails the suite.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from backorigin.rules.model import RulesError, load_rules
from tests.support import Mitmdump

CORPUS = Path(__file__).resolve().parent / "data" / "bad-rules"
EXPECTED: dict[str, str] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
FILES = sorted(p.name for p in CORPUS.iterdir() if p.name != "expected.json")
# expectations about a rule's fields (Condition.*, Redirect.*, RuleNumber) must name the rule:
# by its RuleNumber, or by its place in the list when the RuleNumber itself cannot be read
INSIDE_A_RULE = re.compile(r"\b(?:Redirect|Condition|RuleNumber)\b")
NAMES_THE_RULE = re.compile(r'^bucket "[^"]+": (?:RuleNumber -?\d+|rule #\d+): ')


def refusal(path: Path) -> str:
    with pytest.raises(RulesError) as refused:
        load_rules(path)
    return str(refused.value)


def test_every_corpus_file_has_an_expectation_and_every_expectation_a_file():
    assert len(FILES) >= 20
    assert sorted(EXPECTED) == FILES


@pytest.mark.parametrize("name", FILES)
def test_bad_rules_file_is_refused_with_a_precise_message(name):
    path = CORPUS / name
    message = refusal(path)
    # one line per problem, each naming the file
    assert all(line.startswith(f"{path}: ") for line in message.splitlines()), message
    assert f"{path}: {EXPECTED[name]}" in message
    if INSIDE_A_RULE.search(EXPECTED[name]):
        assert NAMES_THE_RULE.match(EXPECTED[name]), f"expected.json: {name}: name the bucket and the RuleNumber"


def test_a_corpus_file_stops_mitmdump_with_exit_status_1_and_the_message(tmp_path, store):
    path = CORPUS / "authorization-in-pass.json"
    proxy = Mitmdump(f"reverse:{store.endpoint}", path, tmp_path)
    with pytest.raises(RuntimeError, match="mitmdump exited with 1"):
        proxy.start()
    assert proxy.process is not None
    assert proxy.process.returncode == 1
    assert f"{path}: {EXPECTED[path.name]}" in proxy.log()
