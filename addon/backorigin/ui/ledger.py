"""The miss ledger: one JSON line per matched miss (backorigin_ledger), and the backfill
list made from it (`backorigin backfill`): keys still missing from their bucket."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backorigin.miss.probe import store_has
from backorigin.ui.decision import Decision


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, decision: Decision) -> None:
        # one short append per miss; line-buffered so a crash loses at most the line being written
        with open(self.path, "a", encoding="utf-8", buffering=1) as out:
            out.write(json.dumps({"time": round(time.time(), 3), **asdict(decision)}) + "\n")


def read(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {number}: not JSON: {e.msg}") from None


def backfill(path: Path, has_object: Callable[[str, str], bool]) -> list[tuple[str, str]]:
    """(bucket, key) of every mirrored miss in the ledger that the store still lacks, once each,
    in ledger order. Origin 404s and redirects are not listed: there is nothing to copy."""
    wanted: dict[tuple[str, str], None] = {}
    for entry in read(path):
        if entry.get("action") == "mirror" and entry.get("outcome") not in ("origin-404", "unsafe-key"):
            wanted[(entry["bucket"], entry["key"])] = None
    return [ref for ref in wanted if not has_object(*ref)]


def store_checker(client: Any) -> Callable[[str, str], bool]:
    return lambda bucket, key: store_has(client, bucket, key)
