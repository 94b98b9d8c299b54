"""Tombstones in a folder (tombstones.journal): a journal indexed in memory by bucket and key order;
room taken before a delete goes to the store, committed or withdrawn after; followed by another
process; earlier versions' files imported; and nothing any request asks costs more with their number."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from backorigin.tombstones.journal import LocalTombstones, NoRoom, count_in, room_for


def test_concurrent_tombstones_of_one_key_all_succeed(tmp_path):
    """Ceph's s3-tests delete the versions of one key from parallel threads."""
    tombstones = LocalTombstones(tmp_path / "t")

    def add_many(_: int) -> None:
        for _ in range(300):
            tombstones.add("bucket", "myobj")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add_many, range(4)))  # raises if any add did
    assert list(tombstones) == [("bucket", "myobj")] and tombstones.count() == 1
    assert list((tmp_path / "t" / "pending").iterdir()) == []
    assert list(LocalTombstones(tmp_path / "t")) == [("bucket", "myobj")]  # read back from the journal


def test_an_intent_hides_nothing_until_committed_and_a_withdrawn_one_leaves_nothing(tmp_path):
    tombstones = LocalTombstones(tmp_path / "t")
    refused = tombstones.reserve("b", "k", room_for("b", "k", None))
    assert ("b", "k") not in tombstones and [i.key for i, _ in tombstones.pending()] == ["k"]
    tombstones.withdraw(refused)
    assert tombstones.pending() == []
    many = tombstones.reserve("b", None, room_for("b", None, 200))
    assert [named for _, named in tombstones.pending()] == [False]
    tombstones.commit(many, ["x", "y/z", "\udcff-undecodable"])
    assert [("b", "x") in tombstones, ("b", "y/z") in tombstones] == [True, True] and tombstones.pending() == []
    tombstones.discard("b", "x")
    reread = LocalTombstones(tmp_path / "t")
    assert list(reread) == [("b", "y/z"), ("b", "\udcff-undecodable")] and reread.count() == 2


def test_no_room_refuses_before_anything_is_written(tmp_path):
    tombstones = LocalTombstones(tmp_path / "t")
    with pytest.raises(NoRoom):
        tombstones.reserve("b", None, 1 << 62)
    assert tombstones.pending() == []


def test_another_process_follows_the_journal(tmp_path):
    writer, reader = LocalTombstones(tmp_path / "t"), LocalTombstones(tmp_path / "t", fresh=True)
    assert ("b", "k") not in reader
    writer.add("b", "k")
    assert ("b", "k") in reader
    writer.discard("b", "k")
    assert ("b", "k") not in reader and count_in(tmp_path / "t") == 0


def test_earlier_versions_files_move_into_the_journal(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "0123.json").write_text('{"bucket": "b", "key": "old", "time": 1}')
    assert count_in(folder) == 1
    assert list(LocalTombstones(folder)) == [("b", "old")] and list(folder.glob("*.json")) == []


def test_a_key_range_and_asking_cost_the_same_with_many_tombstones(tmp_path):
    """(make bench, scenario 10: a hit, a PUT and a merged-listing page with 1,000,000.)"""
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "journal").write_bytes(b"".join(b'{"op":"add","bucket":"b","key":"k%07d"}\n' % i for i in range(200_000)))
    tombstones = LocalTombstones(folder)
    assert tombstones.count() == 200_000
    started = time.perf_counter()
    for i in range(1000):
        assert ("b", f"k{i * 197:07d}") in tombstones and ("b", f"absent{i}") not in tombstones
        assert tombstones.keys("b", "k01", start_after=f"k01{i:05d}", page=3) == [f"k01{i + j:05d}" for j in (1, 2, 3)]
    assert time.perf_counter() - started < 0.5


def test_deletes_on_their_way_hold_a_bounded_room(tmp_path):
    """Slow clients sending DeleteObjects bodies cannot make the proxy hold its whole disk."""
    from backorigin.tombstones.journal import ROOM_AT_MOST

    tombstones = LocalTombstones(tmp_path / "t")
    room = room_for("b", None, 8 * 1024 * 1024)
    held = [tombstones.reserve("b", None, room) for _ in range(ROOM_AT_MOST // room)]
    with pytest.raises(NoRoom, match="hold"):
        tombstones.reserve("b", None, room)
    tombstones.withdraw(held.pop())
    tombstones.commit(tombstones.reserve("b", None, room), ["k"])  # room again once one was answered
    assert ("b", "k") in tombstones
