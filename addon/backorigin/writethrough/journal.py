"""The write-through journal: the promise that the origin will follow the store, on disk before
the client hears that its write succeeded.

An entry says "these keys changed in the store" (one write: a PUT, a copy, a completed multipart
upload, a delete, or a DeleteObjects and its keys), each key with where its copy lives at the
origin (rules.writethrough.OriginCopy). It holds no body and no secret: the write-through worker
reads the key's current state from the store when it applies the entry, so one entry kind covers
every write, and any number of entries for one key are applied by one copy of its latest state.
An entry is one file, `<nanoseconds>-<random>.json`, written whole (writeback.spool.write_whole),
synced to the disk by default, and removed once every key it names has been applied; names sort
in the order the writes were acknowledged.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from backorigin.rules.writethrough import OriginCopy
from backorigin.s3.addressing import ObjectKey
from backorigin.writeback.spool import write_whole


@dataclass(frozen=True)
class Change:
    """Key `key` of `bucket` in the store at `store` changed; its copy is `origin`."""

    store: str
    bucket: str
    key: str
    origin: OriginCopy

    @property
    def object_key(self) -> ObjectKey:
        return self.store, self.bucket, self.key

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Entry:
    path: Path
    at: float  # when the store's answer was acknowledged (time.time())
    write: str  # what the write was (addressing.WriteKind's value), for the log
    changes: tuple[Change, ...]


class Journal:
    """A directory of entries (readable by this user only), and `downloads/`, where the worker
    keeps a body on its way from the store to the origin."""

    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self.downloads = directory / "downloads"
        for folder in (directory, self.downloads):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def add(self, write: str, changes: Sequence[Change]) -> Entry:
        """Write an entry (blocking: call it from a thread); OSError when it could not be written
        whole (a full disk): then nothing was promised."""
        at = time.time()
        path = self.directory / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        document = {"at": at, "write": write, "changes": [asdict(change) for change in changes]}
        write_whole(path, json.dumps(document).encode(), self.fsync)
        return Entry(path, at, write, tuple(changes))

    @staticmethod
    def read(path: Path) -> Entry:
        """The entry at `path` (FileNotFoundError once it has been applied and removed)."""
        document = json.loads(path.read_bytes())
        changes = tuple(Change(c["store"], c["bucket"], c["key"], OriginCopy(**c["origin"])) for c in document["changes"])
        return Entry(path, float(document["at"]), str(document["write"]), changes)

    def entries(self) -> Iterator[Entry]:
        """Every entry, in the order the writes were acknowledged."""
        for path in sorted(self.directory.glob("*.json")):
            try:
                yield self.read(path)
            except FileNotFoundError:
                continue

    def count(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))

    def new_download(self) -> Path:
        return self.downloads / uuid.uuid4().hex

    def clear_downloads(self) -> None:
        """Bodies a worker that died was copying (the worker's, at its start): never used again."""
        for leftover in self.downloads.iterdir():
            leftover.unlink(missing_ok=True)

    def clear_partials(self) -> None:
        """Entries a proxy that died was writing (the proxy's, at its start): never promised."""
        for leftover in self.directory.glob("*.partial"):
            leftover.unlink(missing_ok=True)
