"""One spool per proxy: the default spool's name, the claim a running proxy holds, and the
spools left behind that a start reports."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from backorigin.writeback.proxyspools import (
    LEGACY_SPOOL,
    OWNER,
    SPOOLS,
    SpoolInUse,
    claim,
    default_spool,
    describe,
    inventory,
    left_behind,
    proxy_name,
    release,
    remove_if_empty,
)

NO_SUCH_PID = 2**22 + 1  # above Linux's largest pid_max: no process has it


@pytest.mark.parametrize("modes, host, port, name", [
    (["reverse:http://store:8333"], "127.0.0.1", 8080, "reverse-127.0.0.1-8080"),
    (["regular"], "", None, "regular-all-8080"),  # mitmproxy's defaults: every address, port 8080
    (["upstream:http://proxy:3128"], "10.0.0.5", 9000, "upstream-10.0.0.5-9000"),
    (["transparent"], "10.200.0.1", 8081, "transparent-10.200.0.1-8081"),
    (["regular@127.0.0.1:8082"], "0.0.0.0", 8080, "regular-127.0.0.1-8082"),  # a mode's own address wins
    (["reverse:http://s:1"], "::1", 8080, "reverse-__1-8080"),
    ([], "", None, "regular-all-8080"),
    (["regular", "reverse:http://s:1@8081"], "127.0.0.1", None, "regular-127.0.0.1-8080+reverse-127.0.0.1-8081"),
])
def test_a_proxy_is_named_by_its_modes_and_listen_addresses(modes, host, port, name):
    assert proxy_name(modes, host, port) == name


def test_the_store_is_not_part_of_the_name():
    """Each write-back carries its endpoint: a new URL for the store must not strand them."""
    assert proxy_name(["reverse:http://store:8333"], "127.0.0.1", 8080) == proxy_name(
        ["reverse:https://10.1.2.3:443"], "127.0.0.1", 8080)


def test_two_listen_addresses_two_spools_one_address_one_spool(tmp_path):
    one = default_spool(tmp_path, ["reverse:http://s:1"], "127.0.0.1", 8080)
    assert one == tmp_path / SPOOLS / "reverse-127.0.0.1-8080"
    assert one != default_spool(tmp_path, ["reverse:http://s:1"], "127.0.0.1", 8081)
    assert one == default_spool(tmp_path, ["reverse:http://s:1"], "127.0.0.1", 8080)  # a restart finds it


def test_the_default_spool_is_under_the_confdir_with_the_home_expanded():
    assert default_spool(Path("~/.mitmproxy"), ["regular"]) == Path.home() / ".mitmproxy" / SPOOLS / "regular-all-8080"


def test_a_claimed_spool_is_refused_to_anyone_else(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    with open(spool / OWNER, "w") as owner:  # another owner: a separate open file, as another process has
        owner.write("4242 reverse-127.0.0.1-8080\n")
        owner.flush()
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SpoolInUse, match=r"spool is in use by another proxy \(pid 4242 reverse-127.0.0.1-8080\)"):
            claim(spool, "regular-127.0.0.1-8081")
    claim(spool, "regular-127.0.0.1-8081")  # once the other has let go
    try:
        assert (spool / OWNER).read_text() == f"{os.getpid()} regular-127.0.0.1-8081\n"
    finally:
        release(spool)


def test_claims_nest_within_a_process_and_the_last_release_lets_go(tmp_path):
    spool = tmp_path / "spool"
    claim(spool, "a")
    assert (spool.stat().st_mode & 0o777, (spool / OWNER).stat().st_mode & 0o777) == (0o700, 0o600)  # as the spool's files
    claim(spool, "a")  # a script reload: the new addon claims before the old one has let go
    release(spool)
    with open(spool / OWNER) as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (spool / "a.json").write_text("{}")  # a pending write-back: the spool stays when its proxy lets go
    release(spool)
    with open(spool / OWNER) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_proxy_that_leaves_nothing_removes_its_spool(tmp_path):
    spool = tmp_path / "spool"
    claim(spool, "a")
    (spool / "tombstones").mkdir()
    (spool / "failed").mkdir()
    release(spool)
    assert not spool.exists()
    kept = spool_with(tmp_path / "kept", tombstones=1)
    claim(kept, "b")
    release(kept)
    assert (kept / "tombstones" / "0.json").exists()


def test_inventory_lists_every_spool_with_what_it_holds(tmp_path):
    held = spool_with(tmp_path / SPOOLS / "reverse-127.0.0.1-8080", pending=2, owner=os.getpid())
    empty = spool_with(tmp_path / SPOOLS / "reverse-127.0.0.1-8081", owner=NO_SUCH_PID)
    (empty / "failed").mkdir()
    found = {state.directory: state for state in inventory(tmp_path)}
    assert (found[held].pending, found[held].holder, found[held].empty) == (2, os.getpid(), False)
    assert (found[empty].holder, found[empty].empty) == (None, True)
    assert remove_if_empty(empty) and not empty.exists()
    assert not remove_if_empty(held) and held.exists()


def test_a_spool_of_nested_empty_folders_goes_and_one_journal_entry_keeps_it(tmp_path):
    empty = spool_with(tmp_path / "a", owner=NO_SUCH_PID)
    for folder in ("tombstones/pending", "writethrough/downloads", "failed"):
        (empty / folder).mkdir(parents=True, exist_ok=True)
    kept = spool_with(tmp_path / "b", owner=NO_SUCH_PID)
    (kept / "writethrough" / "downloads").mkdir(parents=True)
    (kept / "writethrough" / "entry.json").write_text("{}")
    assert remove_if_empty(empty) and not empty.exists()
    assert not remove_if_empty(kept) and (kept / "writethrough" / "entry.json").exists()


def spool_with(directory: Path, pending: int = 0, tombstones: int = 0, owner: int | None = None) -> Path:
    (directory / "tombstones").mkdir(parents=True)
    for i in range(pending):
        (directory / f"{i}.json").write_text("{}")
        (directory / f"{i}.body").write_text("")
    for i in range(tombstones):
        (directory / "tombstones" / f"{i}.json").write_text("{}")
    if owner is not None:
        (directory / OWNER).write_text(f"{owner} some-proxy\n")
    return directory


def test_spools_left_behind_are_those_with_work_that_no_running_proxy_holds(tmp_path):
    mine = spool_with(tmp_path / SPOOLS / "reverse-127.0.0.1-8080", pending=3)
    legacy = spool_with(tmp_path / LEGACY_SPOOL, pending=2, tombstones=1)
    stopped = spool_with(tmp_path / SPOOLS / "reverse-127.0.0.1-8081", tombstones=4, owner=NO_SUCH_PID)
    spool_with(tmp_path / SPOOLS / "reverse-127.0.0.1-8082", pending=1, owner=os.getpid())  # running
    spool_with(tmp_path / SPOOLS / "reverse-127.0.0.1-8083")  # nothing in it
    found = left_behind(tmp_path, mine)
    assert [(s.directory, s.pending, s.tombstones, s.legacy) for s in found] == [
        (legacy, 2, 1, True), (stopped, 0, 4, False)]
    assert describe(found[0]) == (
        f"{legacy} (the spool every proxy shared before backorigin_spool_dir became per proxy) holds 2 pending "
        f"write-back(s) and 1 tombstone(s) and no running proxy uses it; to resume it, run one proxy with "
        f"--set backorigin_spool_dir={legacy}")
    assert "another proxy's spool) holds 4 tombstone(s) and" in describe(found[1])


def test_a_spool_left_with_writes_not_yet_at_the_origin_is_named(tmp_path):
    stopped = spool_with(tmp_path / SPOOLS / "reverse-127.0.0.1-8084", owner=NO_SUCH_PID)
    (stopped / "writethrough").mkdir()
    for i in range(2):
        (stopped / "writethrough" / f"{i}.json").write_text("{}")
    (found,) = left_behind(tmp_path, tmp_path / SPOOLS / "mine")
    assert (found.directory, found.writes) == (stopped, 2)
    assert "holds 2 write(s) not yet at the origin (write-through) and no running proxy uses it" in describe(found)


def test_nothing_is_left_behind_in_a_new_confdir(tmp_path):
    assert left_behind(tmp_path / "confdir", tmp_path / "confdir" / SPOOLS / "regular-all-8080") == []
