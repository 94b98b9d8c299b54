"""The report of a sweep command (`backorigin backfill`, `verify`): the result of each key, the
counts, bytes and problems they add up to, as text on stdout and as JSON (--report).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backorigin.tools.shards import Shard


@dataclass(frozen=True)
class Results:
    """A command's results in its report's order, with their wording, and which are problems."""

    labels: dict[str, str]
    problems: frozenset[str]


RESULTS = {
    "backfill": Results({
        "copied": "copied",
        "already-present": "already present",
        "origin-404": "origin 404",
        "tombstoned": "tombstoned",
        "proxy-pass": "not stored (proxy pass)",
        "failed": "failed",
    }, frozenset({"failed"})),
    "verify": Results({
        "ok": "present and matching",
        "missing": "missing in the store",
        "differs": "differs from the origin",
        "unchecked": "could not be checked",
        "origin-404": "absent at the origin too",
        "tombstoned": "tombstoned",
        "proxy-pass": "never stored (proxy pass)",
    }, frozenset({"missing", "differs", "unchecked"})),
}


@dataclass(frozen=True)
class Finished:
    """The result of one key, as the journal and the report name it."""

    key: str
    result: str
    reason: str = ""
    size: int = 0

    def line(self, bucket: str) -> str:
        entry = {"bucket": bucket, "key": self.key, "result": self.result, "time": round(time.time(), 3)}
        if self.reason:
            entry["reason"] = self.reason
        if self.size:
            entry["bytes"] = self.size
        return json.dumps(entry)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


@dataclass
class Report:
    command: str  # a key of RESULTS
    bucket: str
    store: str
    keys: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (key, result, reason)
    bytes: int = 0
    resumed: int = 0  # keys finished by an earlier run (counted in `counts`)
    seconds: float = 0.0
    shard: Shard | None = None  # the keys of one shard (None: every key of the source)

    @property
    def results(self) -> Results:
        return RESULTS[self.command]

    def add(self, finished: Finished) -> None:
        self.counts[finished.result] += 1
        if finished.result in self.results.problems:
            self.problems.append((finished.key, finished.result, finished.reason))
        if finished.result == "copied":
            self.bytes += finished.size

    @property
    def unfinished(self) -> int:
        """Keys with no result (an interrupted run)."""
        return self.keys - sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return not any(self.counts[result] for result in self.results.problems) and not self.unfinished

    def as_json(self) -> dict[str, Any]:
        copies = {"bytes_copied": self.bytes, "resumed": self.resumed} if self.command == "backfill" else {}
        return {
            "command": self.command, "bucket": self.bucket, "store": self.store,
            "shard": str(self.shard) if self.shard is not None else None, "keys": self.keys,
            "counts": {result: self.counts[result] for result in self.results.labels}, "unfinished": self.unfinished,
            **copies, "seconds": round(self.seconds, 3),
            "problems": [{"key": key, "result": result, "reason": reason} for key, result, reason in self.problems],
            "ok": self.ok,
        }

    def text(self) -> str:
        labels = self.results.labels
        of_shard = f", shard {self.shard}" if self.shard is not None else ""
        lines = [f"{self.command} of s3://{self.bucket} at {self.store}{of_shard}: {self.keys} key(s) in {self.seconds:.1f}s"
                 + (f" ({self.resumed} finished by an earlier run)" if self.resumed else "")]
        width = max(len(label) for label in labels.values())
        for result, label in labels.items():
            extra = f"  ({human_bytes(self.bytes)})" if result == "copied" and self.bytes else ""
            lines.append(f"  {label:<{width}}  {self.counts[result]}{extra}")
        if self.unfinished:
            lines.append(f"  {'not finished':<{width}}  {self.unfinished}")
        for key, result, reason in self.problems:
            lines.append(f"  {labels.get(result, result)}: {key}: {reason}")
        return "\n".join(lines)


def write_report(report: Report, path: Path | None) -> None:
    """The text on stdout; the JSON to `path` too, replaced whole (never a half-written report)."""
    print(report.text())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        os.replace(partial, path)

