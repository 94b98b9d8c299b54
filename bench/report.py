"""What a run says: progress lines on stderr as it goes (`log`), and the table of figures, one row
per measured figure with its target and verdict beside it (`Report`), with every raw number kept
for results.json."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"  # results.md, results.json, profiles, the state curves
NO_TARGET = "none (context)"  # rows that issue 21's list of targets has no line for


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    number: str
    scenario: str
    figure: str
    measured: str
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # the JSON document of results.json: entries of many shapes
    failures: list[str] = field(default_factory=list)  # wrong answers: printed after the table, exit status 1

    def add(self, number: str, scenario: str, figure: str, measured: str, target: str = "", met: bool | None = None,
            failed: str = "") -> None:
        verdict = "" if met is None else ("met" if met else "**MISSED**")
        target = target or NO_TARGET
        if failed:
            verdict = "**FAILED**"
            self.failures.append(f"{scenario}: {failed}")
            log(f"FAILED: {scenario}: {failed}")
        self.rows.append(Row(number, scenario, figure, measured, target, verdict))

    def table(self) -> str:
        """The rows by scenario number (in the order they were added within one)."""
        header = ["#", "scenario", "figure", "measured", "target", "verdict"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in sorted(self.rows, key=lambda row: int(row.number)):
            lines.append(f"| {r.number} | {r.scenario} | {r.figure} | {r.measured} | {r.target} | {r.verdict} |")
        return "\n".join(lines)
