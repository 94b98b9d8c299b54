"""The miss ledger: one JSON line per matched miss (option backorigin_ledger, a child addon of
BackOrigin), and the backfill list made from it (`backorigin backfill`, `ledger-missing`): keys
still missing from their bucket."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader

from backorigin.decision import Action, Decision
from backorigin.options import declare, optional_text, read_settings
from backorigin.s3.clients import store_has


@dataclass(frozen=True)
class LedgerSettings:
    path: str | None = optional_text("backorigin_ledger", "Append every matched miss to this JSON-lines file.")


class Ledger:
    """Appends every mirror decision to its file, once the option names one, with where the
    proxy keeps its tombstones (`tombstones_at`), so that the backfill list made from the
    ledger leaves out the keys deleted through that proxy without being told where they are."""

    def __init__(self, tombstones_at: Callable[[], str | None]) -> None:
        """`append` is a listener of the proxy's Recorder (decision.Recorder's `listeners`)."""
        self.path: Path | None = None
        self.tombstones_at = tombstones_at

    def load(self, loader: Loader) -> None:
        declare(LedgerSettings, loader)

    def configure(self, updated: set[str]) -> None:
        if "backorigin_ledger" in updated:
            given = read_settings(LedgerSettings, ctx.options).path
            self.path = Path(given).expanduser() if given else None
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, decision: Decision) -> None:
        if self.path is None or decision.action != Action.MIRROR:
            return
        # one short append per miss; line-buffered so a crash loses at most the line being written
        with open(self.path, "a", encoding="utf-8", buffering=1) as out:
            entry = {"time": round(time.time(), 3), **decision.as_metadata(), "tombstones": self.tombstones_at()}
            out.write(json.dumps(entry) + "\n")


def read(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {number}: not JSON: {e.msg}") from None


def tombstones_named(path: Path) -> str | None:
    """Where the proxy that wrote the ledger kept its tombstones: a folder or s3://BUCKET/PREFIX/,
    or None when it kept none (backorigin_deletes=resurrect) or the ledger is empty. ValueError
    when a line does not say (a ledger written before backorigin 0.2.0) or lines say different
    things (proxies with different tombstones writing one ledger)."""
    places: set[str | None] = set()
    for number, entry in enumerate(read(path), 1):
        if "tombstones" not in entry:
            raise ValueError(f"{path}: line {number} does not say where its proxy kept tombstones (a ledger written "
                             "before backorigin 0.2.0)")
        places.add(entry["tombstones"])
    if len(places) > 1:
        raise ValueError(f"{path}: its lines name tombstones in several places ({', '.join(sorted(map(str, places)))})")
    return next(iter(places), None)


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
