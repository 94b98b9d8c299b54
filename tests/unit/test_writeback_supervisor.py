"""The write-back supervisor's index of pending write-backs by object (issue 26, finding 1: a
DeleteObjects of many keys with 400 write-backs pending took 37 s, every key scanning them all).
The real worker process runs here; every write-back is held, so none is uploaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backorigin.writeback.spool import ObjectUpload
from backorigin.writeback.supervisor import WriteBackSupervisor

ENDPOINT, BUCKET = "http://127.0.0.1:9", "bucket"


class CountingDict(dict):
    """A dict that counts the entries every walk over it visits (lookups by key are not walks)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.visited = 0

    def _counted(self, walk: Iterator[Any]) -> Iterator[Any]:
        for entry in walk:
            self.visited += 1
            yield entry

    def __iter__(self) -> Iterator[Any]:
        return self._counted(super().__iter__())

    def keys(self) -> Any:
        return list(self._counted(iter(super().keys())))

    def values(self) -> Any:
        return list(self._counted(iter(super().values())))

    def items(self) -> Any:
        return list(self._counted(iter(super().items())))


def spool_one(supervisor: WriteBackSupervisor, tmp_path: Path, key: str) -> Path:
    body = tmp_path / f"{key.replace('/', '-')}.part"
    body.write_bytes(key.encode())
    supervisor.hold((ENDPOINT, BUCKET, key))  # a delete on its way: the worker parks it, never uploads it
    return supervisor.submit(ObjectUpload(ENDPOINT, BUCKET, key, {}, {}, len(key), "m"), body)


async def test_a_delete_of_many_keys_costs_the_keys_not_the_pending_write_backs(tmp_path):
    supervisor = WriteBackSupervisor(tmp_path / "spool", workers=1)
    pending = {f"pending/{i}": spool_one(supervisor, tmp_path, f"pending/{i}") for i in range(400)}
    try:
        deleted = [f"pending/{i}" for i in range(0, 400, 80)] + [f"absent/{i}" for i in range(995)]  # 1,000 keys
        await supervisor.withdraw((ENDPOINT, BUCKET, deleted[0]))  # once answered, the worker is up (its greeting walked them)
        walked = CountingDict(supervisor._pending)
        supervisor._pending = walked
        for key in deleted[1:]:  # what a DeleteObjects the store said yes to does for each of its keys
            await supervisor.withdraw((ENDPOINT, BUCKET, key))  # (no store to ask whether a copy landed before)
        # each withdrawn write-back is visited at most a few times; the 395 others never
        assert walked.visited <= 4 * 4, f"{walked.visited} pending write-backs visited for a delete of 1,000 keys"
        assert supervisor.pending == 395
        for key, manifest in pending.items():
            assert manifest.exists() is (key not in deleted), key  # the worker unspooled exactly the deleted keys'
    finally:
        await supervisor.drain(1)
