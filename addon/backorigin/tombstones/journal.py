"""Tombstones in a folder beside the spool (one proxy): `LocalTombstones`.

A journal of JSON lines (`{"op": "add"|"clear", "bucket": B, "key": K}`), appended to, read into
memory at start-up (compacted there when it is mostly dead), and indexed by bucket in key order
(sortedcontainers), so that asking costs O(1) and a key range O(log n), whatever their number.

A delete takes room before the store is asked: an intent, `pending/<id>.json` (its bucket, and its
key when it names one), with the space its records will need allocated behind it. No room: the
delete is refused before the store sees it. Only the store's 2xx commits it: the room is given back
and the records are appended at once (the disk had that room a moment ago); a refusal withdraws it.
An intent a crash left behind is resolved at the next start by asking the store (see `pending`).

The write-back worker and the sweep read the same journal from another process (`fresh`): they
follow it as it grows, and read it afresh when it was compacted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sortedcontainers import SortedSet

logger = logging.getLogger(__name__)

JOURNAL = "journal"
PENDING = "pending"
RECORD_OVERHEAD = 48  # bytes of a journal record besides its bucket and key
COMPACT_ABOVE = 10_000  # records in a journal at least, and twice the tombstones, before start-up compacts it
# Room held at once for deletes on their way: slow clients cannot make the proxy hold more of its disk
# than this (past it, a delete gets 503 until others have been answered)
ROOM_AT_MOST = 64 * 1024 * 1024


class NoRoom(OSError):
    """The disk has no room for a delete's tombstones: the delete is refused before the store sees it."""


@dataclass(frozen=True)
class Intent:
    """A delete on its way to the store: room taken for its tombstones, nothing hidden yet."""

    bucket: str
    key: str | None  # None: a DeleteObjects (its keys count only once the store said yes)
    path: Path | None = None  # the intent on disk (the local kind)
    header: int = 0  # bytes of the intent before the room behind it
    room: int = 0  # bytes taken behind it


def record(op: str, bucket: str, key: str) -> bytes:
    line = json.dumps({"op": op, "bucket": bucket, "key": key}, ensure_ascii=False) + "\n"
    return line.encode("utf-8", "surrogateescape")  # a key from an undecodable path too


def room_for(bucket: str, key: str | None, content_length: int | None, most: int = 1000) -> int:
    """Bytes a delete's records can take: one record for a key; for a DeleteObjects, at most `most`
    keys, whose bytes are all in its body (a record escapes a key to at most twice its length)."""
    if key is not None:
        return len(record("add", bucket, key))
    per_key = len(bucket.encode()) + RECORD_OVERHEAD
    most_room = most * (per_key + 2 * 1024)  # S3's keys are at most 1,024 bytes, whatever the body's size
    if content_length is None:
        return most_room
    return min(most_room, min(most, content_length // 28 + 1) * per_key + 2 * content_length)  # <Object><Key></Key></Object>: 28


class LocalTombstones:
    blocking = False

    def __init__(self, directory: Path, fresh: bool = False, fsync: bool = False) -> None:
        self.directory = directory
        self.fresh = fresh  # another process writes the journal: follow it
        self.fsync = fsync
        self.pending_dir = directory / PENDING
        for folder in () if fresh else (directory, self.pending_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._journal = directory / JOURNAL
        self._lock = threading.Lock()  # commits and clears run in threads while the hooks ask
        self._keys: dict[str, SortedSet] = {}
        self._count = 0
        self._read_to = 0  # how far the journal has been read (fresh)
        self._inode = 0
        self._partial = b""
        self._reserved = 0  # room held by intents, in all
        if not fresh:
            self._import_legacy()
            self._compact_if_dead(self._read_all())

    # asking ------------------------------------------------------------------------------------

    def __contains__(self, ref: tuple[str, str]) -> bool:
        if self.fresh:
            with self._lock:
                self._follow()
        keys = self._keys.get(ref[0])
        return keys is not None and ref[1] in keys

    def __len__(self) -> int:
        return self._count

    def count(self) -> int | None:
        if self.fresh:
            with self._lock:
                self._follow()
        return self._count

    def keys(self, bucket: str, prefix: str = "", start_after: str = "", page: int | None = None) -> list[str]:
        """The bucket's tombstoned keys under `prefix` after `start_after`, in key order, at most
        `page` (O(log n) to find the first)."""
        with self._lock:
            keys = self._keys.get(bucket)
            if keys is None:
                return []
            found: list[str] = []
            for key in keys.irange(minimum=max(prefix, start_after), inclusive=(not start_after or prefix > start_after, True)):
                if not key.startswith(prefix) or (page is not None and len(found) >= page):
                    break
                found.append(key)
            return found

    def __iter__(self) -> Iterator[tuple[str, str]]:
        with self._lock:
            return iter([(bucket, key) for bucket in sorted(self._keys) for key in self._keys[bucket]])

    # deleting ----------------------------------------------------------------------------------

    def reserve(self, bucket: str, key: str | None, room: int) -> Intent:
        """Take room for a delete's records (NoRoom when the disk has none, or the deletes on their
        way hold ROOM_AT_MOST already)."""
        room = max(room, 1)
        with self._lock:
            if self._reserved + room > ROOM_AT_MOST:
                raise NoRoom(28, f"deletes on their way hold {self._reserved} bytes of {self.directory} already")
            self._reserved += room
        try:
            return self._reserve(bucket, key, room)
        except NoRoom:
            self._give_back(room)
            raise

    def _give_back(self, room: int) -> None:
        with self._lock:
            self._reserved -= room

    def _reserve(self, bucket: str, key: str | None, room: int) -> Intent:
        path = self.pending_dir / f"{uuid.uuid4().hex}.json"
        header = (json.dumps({"bucket": bucket, "key": key}, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, header)
                os.posix_fallocate(fd, len(header), room)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fsync:
                _sync_folder(self.pending_dir)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise NoRoom(e.errno, f"no room for tombstones in {self.directory}: {e.strerror}") from None
        return Intent(bucket, key, path, len(header), room)

    def commit(self, intent: Intent, keys: Sequence[str]) -> None:
        """The store said yes: the room goes back and the records are appended, durable when this
        returns (OSError when they could not be: the intent stays, resolved at the next start)."""
        assert intent.path is not None
        os.truncate(intent.path, intent.header)
        self._give_back(intent.room)
        self._append(b"".join(record("add", intent.bucket, key) for key in keys), [(intent.bucket, key, True) for key in keys])
        intent.path.unlink(missing_ok=True)

    def withdraw(self, intent: Intent) -> None:
        if intent.path is not None:
            intent.path.unlink(missing_ok=True)
            self._give_back(intent.room)

    def add(self, bucket: str, key: str) -> None:
        """A tombstone, at once (tools and tests; a delete through the proxy reserves, then commits)."""
        self.commit(self.reserve(bucket, key, room_for(bucket, key, None)), [key])

    def discard(self, bucket: str, key: str) -> None:
        """The key was written again: its tombstone goes (from memory even when the journal is full)."""
        try:
            self._append(record("clear", bucket, key), [(bucket, key, False)])
        except OSError as e:
            with self._lock:
                self._apply(bucket, key, False)
            logger.warning("tombstone of s3://%s/%s cleared in memory only: %s", bucket, key, e)

    def pending(self) -> list[tuple[Intent, bool]]:
        """Intents a crash left behind, each with whether it names its key (a DeleteObjects' does
        not: its keys were never read before the store's answer)."""
        found = []
        for path in sorted(self.pending_dir.glob("*.json")):
            try:
                first = path.read_bytes().split(b"\n", 1)[0]
                header = json.loads(first.decode("utf-8", "surrogateescape"))
                found.append((Intent(header["bucket"], header["key"], path, len(first) + 1), header["key"] is not None))
            except (OSError, ValueError, KeyError) as e:
                logger.warning("unreadable intent %s left: %s", path, e)
        return found

    # the journal -------------------------------------------------------------------------------

    def _append(self, data: bytes, changes: list[tuple[str, str, bool]]) -> None:
        with self._lock:
            fd = os.open(self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                end = os.fstat(fd).st_size
                try:
                    _write_all(fd, data)
                    if self.fsync:
                        os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, end)  # no half record left for the next to run into
                    raise
            finally:
                os.close(fd)
            for bucket, key, added in changes:
                self._apply(bucket, key, added)

    def _apply(self, bucket: str, key: str, added: bool) -> None:
        keys = self._keys.get(bucket)
        if added:
            if keys is None:
                keys = self._keys[bucket] = SortedSet()
            if key not in keys:
                keys.add(key)
                self._count += 1
        elif keys is not None and key in keys:
            keys.discard(key)
            self._count -= 1
            if not keys:
                del self._keys[bucket]

    def _read_all(self) -> int:
        """Read the journal from its start; the number of records in it."""
        self._keys, self._count, self._read_to, self._partial = {}, 0, 0, b""
        return self._follow()

    def _follow(self) -> int:
        """Apply what was appended since the last read (from the start when it was compacted)."""
        try:
            with open(self._journal, "rb") as journal:
                status = os.fstat(journal.fileno())
                if status.st_ino != self._inode or status.st_size < self._read_to:
                    self._keys, self._count, self._read_to, self._partial, self._inode = {}, 0, 0, b"", status.st_ino
                journal.seek(self._read_to)
                data = self._partial + journal.read()
        except FileNotFoundError:
            return 0
        self._read_to += len(data) - len(self._partial)
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            try:
                entry = json.loads(line.decode("utf-8", "surrogateescape"))
                self._apply(entry["bucket"], entry["key"], entry["op"] == "add")
            except (ValueError, KeyError, TypeError):
                logger.warning("unreadable tombstone record in %s ignored", self._journal)
        return len(lines)

    def _compact_if_dead(self, records: int) -> None:
        if records < COMPACT_ABOVE or records < 2 * self._count:
            return
        partial = self._journal.with_suffix(".partial")
        with open(partial, "wb") as out:
            for bucket, keys in self._keys.items():
                for key in keys:
                    out.write(record("add", bucket, key))
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self._journal)
        self._inode = os.stat(self._journal).st_ino
        self._read_to = self._journal.stat().st_size
        logger.info("tombstones: journal compacted from %d records to %d", records, self._count)

    def _import_legacy(self) -> None:
        """Tombstones of earlier versions, one JSON file each, move into the journal."""
        legacy = sorted(self.directory.glob("*.json"))
        entries = []
        for path in legacy:
            try:
                entry = json.loads(path.read_text())
                entries.append((entry["bucket"], entry["key"]))
            except (OSError, ValueError, KeyError) as e:
                logger.warning("tombstone %s unreadable, ignored: %s", path, e)
        if entries:
            self._append(b"".join(record("add", b, k) for b, k in entries), [])
        for path in legacy:
            path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def count_in(directory: Path) -> int:
    """How many tombstones a folder holds, earlier versions' files included (for a spool no proxy runs)."""
    if not directory.is_dir():
        return 0
    return (LocalTombstones(directory, fresh=True).count() or 0) + sum(1 for _ in directory.glob("*.json"))
