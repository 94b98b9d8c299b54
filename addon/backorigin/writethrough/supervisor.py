"""The proxy's side of write-through: the journal written before a write's answer goes out, the
write-through worker run (writeback.process) and told of every entry, and what the metrics and the
miss path ask: the backlog, its age, and whether a key has a write the origin has not had yet."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backorigin.s3.addressing import ObjectKey
from backorigin.writeback.process import Message, WorkerProcess
from backorigin.writethrough.journal import Change, Entry, Journal
from backorigin.writethrough.writethroughsettings import WriteThroughSettings

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    """An entry in the journal, and its keys the worker has not synced yet."""

    at: float
    keys: set[ObjectKey] = field(default_factory=set)


class WriteThroughSupervisor:
    def __init__(self, directory: Path, fsync: bool = WriteThroughSettings.fsync, workers: int = WriteThroughSettings.workers,
                 synced: Callable[[float], None] = lambda seconds: None) -> None:
        """`synced(seconds)`: told of each entry's time from its write's answer to the origin's copy (ui.metrics)."""
        self.journal = Journal(directory, fsync)
        self.workers = workers
        self.outcomes: Counter[str] = Counter()  # synced keys by action; retries by scope
        self.oldest_at: float | None = None  # when the oldest entry not yet applied was acknowledged
        self.synced = synced
        self._pending: OrderedDict[Path, Pending] = OrderedDict()  # in the order of the writes
        self._keys: Counter[ObjectKey] = Counter()  # entries not yet applied, by key
        self._secrets: list[list[str]] = []
        self._waiting: list[tuple[str, Sequence[Change], asyncio.Future[None]]] = []  # writes for the next entry
        self._writer: asyncio.Task[None] | None = None
        self.process = WorkerProcess("write-through worker", lambda: self.command(), self._greeting, self._heard)

    @property
    def pending(self) -> int:
        """Entries (writes) not yet applied at the origin."""
        return len(self._pending)

    @property
    def keys_pending(self) -> int:
        return len(self._keys)

    def lag(self) -> float:
        """Seconds since the oldest write not yet at the origin was acknowledged (0: none)."""
        oldest = self.oldest_at
        return max(time.time() - oldest, 0.0) if oldest is not None else 0.0

    def writing(self, key: ObjectKey) -> bool:
        """Whether a write of the key has not reached the origin yet (its copy there is stale)."""
        return key in self._keys

    def credentials(self, secrets: dict[tuple[str, str], str]) -> None:
        """The MirrorAuth secrets of the rules in force, for the worker (never written to disk)."""
        self._secrets = [[endpoint, key_id, secret] for (endpoint, key_id), secret in sorted(secrets.items())]
        if self.process.started:
            self.process.send({"credentials": self._secrets})

    async def record(self, write: str, changes: Sequence[Change]) -> None:
        """Journal the write (in a thread; synced to the disk unless the option says not to), then
        have the worker apply it. The writes that arrive while an entry is being written share the
        next one: one file and one sync for all of them (a group commit). An exception (OSError: a
        full disk) when it could not be journaled: nothing was promised."""
        journaled = asyncio.get_running_loop().create_future()
        self._waiting.append((write, changes, journaled))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_entries())
        await journaled

    async def _write_entries(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            writes = "+".join(dict.fromkeys(write for write, _, _ in group))
            try:
                entry = await asyncio.to_thread(self.journal.add, writes, [change for _, changes, _ in group for change in changes])
            except Exception as e:  # every write waiting hears of it, whatever it is
                for *_, journaled in group:
                    if not journaled.done():  # its client may have gone meanwhile
                        journaled.set_exception(e)
                continue
            self._track(entry)
            self.process.send({"entry": str(entry.path)})
            for *_, journaled in group:
                if not journaled.done():
                    journaled.set_result(None)

    def track_journal(self) -> None:
        """Count what a previous run left in the journal as pending, from the start (a scrape of
        backorigin_writethrough_pending before the worker is up must not read 0)."""
        self.journal.clear_partials()
        for entry in self.journal.entries():
            self._track(entry)

    def resume(self) -> int:
        """Start the worker for what the journal holds (`track_journal`)."""
        resumed = len(self._pending)
        if resumed:
            logger.info("write-through: resuming %d journal entries (%d key(s) not yet at the origin) from %s", resumed,
                        len(self._keys), self.journal.directory)
            self.process.start()
        return resumed

    async def drain(self, timeout: float) -> None:
        await self.process.drain(timeout)
        if self._pending:
            logger.warning("write-through: %d write(s) not yet at the origin stay journaled in %s and resume at the next "
                           "start", len(self._pending), self.journal.directory)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "backorigin.writethrough.worker", "--journal", str(self.journal.directory),
                "--workers", str(self.workers)]

    def _greeting(self) -> list[Message]:
        return [{"credentials": self._secrets}, *({"entry": str(path)} for path in self._pending)]

    def _track(self, entry: Entry) -> None:
        keys = {change.object_key for change in entry.changes}
        self._pending[entry.path] = Pending(entry.at, keys)
        self._keys.update(keys)
        if self.oldest_at is None:
            self.oldest_at = entry.at

    def _heard(self, message: dict[str, Any]) -> None:
        if "synced" in message:
            store, bucket, key = message["synced"]
            self.outcomes[message["action"]] += 1
            now = time.time()
            for path in map(Path, message["entries"]):
                if self._forget((store, bucket, key), path):
                    self.synced(now - self._at(path, now))
            self._settle([Path(path) for path in message["entries"]])
        elif "retrying" in message:
            self.outcomes[f"retry_{message['scope']}"] += 1
        elif "gone" in message:
            path = Path(message["gone"])
            for key in list(self._pending[path].keys) if path in self._pending else []:
                self._forget(key, path)
            self._settle([path])

    def _forget(self, key: ObjectKey, path: Path) -> bool:
        """The key of the entry at `path` is at the origin; False when that was known already."""
        pending = self._pending.get(path)
        if pending is None or key not in pending.keys:
            return False
        pending.keys.discard(key)
        self._keys[key] -= 1
        if not self._keys[key]:
            del self._keys[key]
        return True

    def _at(self, path: Path, default: float) -> float:
        pending = self._pending.get(path)
        return pending.at if pending is not None else default

    def _settle(self, paths: list[Path]) -> None:
        for path in paths:
            if path in self._pending and not self._pending[path].keys:
                del self._pending[path]
        self.oldest_at = next(iter(self._pending.values())).at if self._pending else None
