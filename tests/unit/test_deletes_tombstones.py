"""Tombstones in a folder: several deletes of one key at once (Ceph's s3-tests delete the versions
of one key from parallel threads) each write it whole, and nothing half-written is left."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from backorigin.deletes.tombstones import LocalTombstones


def test_concurrent_tombstones_of_one_key_all_succeed(tmp_path):
    tombstones = LocalTombstones(tmp_path / "t")

    def add_many(_: int) -> None:
        for _ in range(300):
            tombstones.add("bucket", "myobj")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add_many, range(4)))  # raises if any add did
    assert list(tombstones) == [("bucket", "myobj")]
    assert [p.suffix for p in (tmp_path / "t").iterdir()] == [".json"]
    assert list(LocalTombstones(tmp_path / "t")) == [("bucket", "myobj")]  # read back from the folder
