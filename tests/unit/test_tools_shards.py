"""Shards of the sweep: a stable hash of the key (pinned, so that a new release never moves a key
to another shard halfway through a migration), K/N and the Kubernetes environment, and every key
source keeping only its shard's keys."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backorigin.tools import cli
from backorigin.tools.backfill import state_folder
from backorigin.tools.shards import Shard, ShardError, parse_shard, shard_from_environment, shard_of
from backorigin.tools.sweep import SweepError, keys_from_origin_listing, read_source, settle_shard
from tests.support import book_of, mirror_rule
from tests.sweep_support import FakeListing


def test_the_shard_of_a_key_is_pinned():
    # the first 8 bytes of SHA-256("") are e3b0c44298fc1c14 = 16406829232824261652
    assert [shard_of("", n) for n in (1, 4, 7)] == [0, 0, 1]
    assert {key: shard_of(key, 4) for key in ("a", "k0000", "k1999", "photos/2019/IMG_0001.jpg", "données/été.txt",
                                               "日本語/キー")} == {
        "a": 2, "k0000": 3, "k1999": 0, "photos/2019/IMG_0001.jpg": 3, "données/été.txt": 1, "日本語/キー": 1}
    assert shard_of("photos/2019/IMG_0001.jpg", 1000003) == 279878


@given(st.lists(st.text(), max_size=60, unique=True), st.integers(1, 9))
def test_shards_never_overlap_and_cover_every_key(keys, count):
    owners = [[shard for shard in range(count) if Shard(shard, count).owns(key)] for key in keys]
    assert all(len(owner) == 1 for owner in owners)


def test_shards_are_about_even():
    counts = [0] * 4
    for n in range(4000):
        counts[shard_of(f"k{n:05d}", 4)] += 1
    assert all(900 <= c <= 1100 for c in counts), counts


def test_k_of_n_as_text():
    assert parse_shard("0/4") == Shard(0, 4) and parse_shard(" 3/4 ") == Shard(3, 4) and str(Shard(3, 4)) == "3/4"
    assert parse_shard("0/1") == Shard(0, 1)
    for text, says in (("4/4", "shard 4 does not exist: with 4 shard(s) K is 0 to 3"), ("1/0", "1 or more, not 0"),
                       ("-1/4", "is not K/N"), ("1", "is not K/N"), ("a/b", "is not K/N"), ("1/2/3", "is not K/N"),
                       ("²/4", "is not K/N")):
        with pytest.raises(ShardError, match=re.escape(says)):
            parse_shard(text)


def test_the_command_line_refuses_a_bad_shard(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.parser().parse_args(["verify", "--rules", "r", "--store", "s", "--bucket", "b", "--keys", "k", "--shard", "4/4"])
    assert exit.value.code == 2
    assert "argument --shard: shard 4 does not exist" in capsys.readouterr().err
    args = cli.parser().parse_args(["backfill", "--rules", "r", "--store", "s", "--bucket", "b", "--origin-listing",
                                    "--shard", "1/4"])
    assert args.shard == Shard(1, 4) and args.state is None


def test_the_kubernetes_environment_names_the_shard_when_shard_is_absent():
    assert shard_from_environment({}) is None
    assert shard_from_environment({"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "4"}) == Shard(2, 4)
    assert settle_shard(Shard(0, 2), {"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "4"}) == Shard(0, 2)  # --shard wins
    assert settle_shard(None, {"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "4"}) == Shard(2, 4)
    for environ, says in (
        ({"JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX is set but JOB_COMPLETIONS is not"),
        ({"JOB_COMPLETIONS": "4"}, "JOB_COMPLETIONS is set but JOB_COMPLETION_INDEX is not"),
        ({"JOB_COMPLETION_INDEX": "x", "JOB_COMPLETIONS": "4"}, "JOB_COMPLETION_INDEX='x' is not a whole number"),
        ({"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": ""}, "JOB_COMPLETIONS='' is not a whole number"),
        ({"JOB_COMPLETION_INDEX": "4", "JOB_COMPLETIONS": "4"}, "JOB_COMPLETION_INDEX=4, JOB_COMPLETIONS=4: shard 4 does not"),
    ):
        with pytest.raises(SweepError, match=re.escape(says)):
            settle_shard(None, environ)


def test_each_shard_has_its_own_default_state_folder():
    assert state_folder(None, None) == Path(".backfill")
    assert state_folder(None, Shard(1, 4)) == Path(".backfill/shard-1-of-4")
    assert state_folder(Path("/data/state"), Shard(1, 4)) == Path("/data/state")  # given: as it is


def source(**named) -> argparse.Namespace:
    return argparse.Namespace(**{"keys": None, "ledger": None, "bucket": "b", **named})


def test_a_key_list_and_a_ledger_keep_the_shards_keys(tmp_path):
    keys = [f"k{n:04d}" for n in range(200)]
    (tmp_path / "keys.txt").write_text("".join(f"{key}\n" for key in keys))
    (tmp_path / "ledger.jsonl").write_text("".join(f'{{"bucket": "b", "key": "{key}", "action": "mirror", "outcome": "mirrored"}}\n'
                                                   for key in keys))
    book = book_of("b", [mirror_rule(1, "http://o/")])
    for named in ({"keys": tmp_path / "keys.txt"}, {"ledger": tmp_path / "ledger.jsonl"}):
        shards = [[item.key for item in read_source(source(**named), book, Shard(k, 3))] for k in range(3)]
        assert sorted(key for shard in shards for key in shard) == keys
        assert all(shard_of(key, 3) == k for k, shard in enumerate(shards) for key in shard)
        assert [item.key for item in read_source(source(**named), book, None)] == keys


def test_each_shard_lists_the_origin_and_keeps_its_own_keys():
    origin = FakeListing([f"data/k{n:04d}" for n in range(2500)] + ["other/x"])
    book = book_of("b", [mirror_rule(1, "http://127.0.0.1:9/origin-bucket/data/")])
    shards = [keys_from_origin_listing(book, "b", Shard(k, 4), lambda endpoint, rule: origin) for k in range(4)]
    assert sorted(item.key for shard in shards for item in shard) == [f"k{n:04d}" for n in range(2500)]
    assert all(shard_of(item.key, 4) == k for k, shard in enumerate(shards) for item in shard)
    assert origin.pages == 4 * 3  # the cost of hash ownership: every shard reads every page under the prefix
    assert len(keys_from_origin_listing(book, "b", None, lambda endpoint, rule: origin)) == 2500
