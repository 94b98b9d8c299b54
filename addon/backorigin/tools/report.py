"""The report of a sweep command (`backorigin backfill`, `verify`): the result of each key, the
counts, bytes and problems they add up to, as text on stdout and as JSON (--report); and
`backorigin report merge`, which adds up the reports of a sweep's shards (--shard K/N) into
the report one process over every key would have written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backorigin.tools.shards import Shard, parse_shard


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
        "redirected": "skipped (a redirect rule)",
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
        "redirected": "skipped (a redirect rule)",
    }, frozenset({"missing", "differs", "unchecked"})),
    # verify --check origin: is every object of the store at the origin (a rollback loses nothing)?
    "verify-origin": Results({
        "ok": "at the origin and matching",
        "missing": "missing at the origin",
        "differs": "differs at the origin",
        "deleted": "deleted through the proxy, still at the origin",
        "unchecked": "could not be checked",
        "origin-only": "only at the origin (never stored)",
        "absent": "in neither",
        "no-origin": "no S3 origin covers the key",
    }, frozenset({"missing", "differs", "deleted", "unchecked"})),
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
    seconds: float = 0.0  # of a merged report: its longest shard's
    shard: Shard | None = None  # the keys of one shard (None: every key of the source)
    merged_shards: int = 0  # the shards a merged report adds up (0: not merged)

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
            **copies, "seconds": round(self.seconds, 3), **({"merged_shards": self.merged_shards} if self.merged_shards else {}),
            "problems": [{"key": key, "result": result, "reason": reason} for key, result, reason in self.problems],
            "ok": self.ok,
        }

    def text(self) -> str:
        labels = self.results.labels
        of_shard = f", shard {self.shard}" if self.shard is not None else ""
        merged = f" ({self.merged_shards} shards merged; the longest took {self.seconds:.1f}s)" if self.merged_shards else ""
        lines = [f"{self.command} of s3://{self.bucket} at {self.store}{of_shard}: {self.keys} key(s)"
                 + (merged or f" in {self.seconds:.1f}s")
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


# merging shards' reports -------------------------------------------------------------------


class ReportError(Exception):
    """Reports that cannot be merged: unreadable, not a shard's, of another sweep, a shard twice or missing."""


def read_report(path: Path) -> Report:
    """A shard's JSON report (as write_report wrote it) as a Report."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot read the report: {getattr(e, 'strerror', None) or e}") from None
    try:
        report = Report(data["command"], data["bucket"], data["store"], keys=int(data["keys"]),
                        counts=Counter({result: int(n) for result, n in data["counts"].items()}),
                        problems=[(p["key"], p["result"], p["reason"]) for p in data["problems"]],
                        bytes=int(data.get("bytes_copied", 0)), resumed=int(data.get("resumed", 0)),
                        seconds=float(data["seconds"]),
                        shard=parse_shard(data["shard"]) if data.get("shard") is not None else None)
        unknown = set(report.counts) - set(report.results.labels)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ReportError(f"{path}: not a backfill or verify report ({type(e).__name__}: {e})") from None
    if unknown:
        raise ReportError(f"{path}: results a {report.command} report does not have: {', '.join(sorted(unknown))}")
    return report


def _shard_of(path: Path, report: Report) -> Shard:
    if report.shard is None:
        raise ReportError(f"{path}: not a shard's report (its sweep ran without --shard): nothing to merge it with")
    return report.shard


def merge_reports(reports: list[tuple[Path, Report]]) -> Report:
    """One report from the reports of every shard of one sweep (each with the file it came
    from): counts, keys, bytes and problems added up, as one process over every key would
    have counted them; the time is the longest shard's."""
    first_path, first = reports[0]
    first_shard = _shard_of(first_path, first)
    by_index: dict[int, tuple[Path, Report]] = {}
    for path, report in reports:
        shard = _shard_of(path, report)
        for name in ("command", "bucket", "store"):
            if getattr(report, name) != getattr(first, name):
                raise ReportError(f"{path}: {name} {getattr(report, name)!r}, but {first_path} has "
                                  f"{getattr(first, name)!r}: the reports of one sweep only")
        if shard.count != first_shard.count:
            raise ReportError(f"{path}: shard {shard}, but {first_path} is shard {first_shard}: "
                              "the shards of one sweep have the same N")
        if shard.index in by_index:
            raise ReportError(f"shard {shard} twice: {by_index[shard.index][0]} and {path}")
        by_index[shard.index] = (path, report)
    count = first_shard.count
    missing = [f"{index}/{count}" for index in range(count) if index not in by_index]
    if missing:
        raise ReportError(f"shard(s) {', '.join(missing)} missing: a report from each of the {count} shards is needed")
    merged = Report(first.command, first.bucket, first.store, merged_shards=count)
    for index in range(count):
        _, report = by_index[index]
        merged.keys += report.keys
        merged.counts.update(report.counts)
        merged.problems += report.problems
        merged.bytes += report.bytes
        merged.resumed += report.resumed
        merged.seconds = max(merged.seconds, report.seconds)
    return merged


def run_merge(paths: list[Path], out: Path | None) -> int:
    """`backorigin report merge`: 0 when the merged report is ok, 1 when it is not, 2 when the
    reports cannot be merged."""
    try:
        merged = merge_reports([(path, read_report(path)) for path in paths])
    except ReportError as e:
        print(f"backorigin report merge: {e}", file=sys.stderr)
        return 2
    write_report(merged, out)
    return 0 if merged.ok else 1
