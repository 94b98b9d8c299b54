"""Which keys a shard of the sweep owns (`--shard K/N`), for running `backorigin backfill` and
`verify` on N machines under the user's own scheduler (a Kubernetes Indexed Job, GNU parallel,
a batch queue): no process talks to another.

A key belongs to shard `shard_of(key, N)`: the first 8 bytes of the SHA-256 of its UTF-8 bytes,
as a big-endian number, modulo N. The same key always lands in the same shard, on any machine
and Python (unlike `hash()`, which is salted per process), whatever source named it, so the N
shards never overlap and together cover every key. K counts from 0, as a Kubernetes Indexed
Job's JOB_COMPLETION_INDEX does; without --shard, JOB_COMPLETION_INDEX and JOB_COMPLETIONS
(which the Job's manifest sets to its completions) name the shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
COUNT_VARIABLE = "JOB_COMPLETIONS"


class ShardError(ValueError):
    """A shard that cannot be: not K/N, K outside 0..N-1, half of the environment's pair."""


def shard_of(key: str, count: int) -> int:
    """The shard (0 .. count-1) that owns `key`."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    index: int  # K, from 0
    count: int  # N

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ShardError(f"the number of shards must be 1 or more, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ShardError(f"shard {self.index} does not exist: with {self.count} shard(s) K is 0 to {self.count - 1}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    @property
    def folder(self) -> str:
        """The shard's own folder name under a default state folder."""
        return f"shard-{self.index}-of-{self.count}"


def _whole_number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdecimal() else None


def parse_shard(text: str) -> Shard:
    """"K/N" (0 <= K < N) as a Shard."""
    before, _, after = text.partition("/")
    index, count = _whole_number(before), _whole_number(after)
    if index is None or count is None:
        raise ShardError(f"{text!r} is not K/N (two whole numbers, e.g. 0/4)")
    return Shard(index, count)


def shard_from_environment(environ: Mapping[str, str]) -> Shard | None:
    """The shard JOB_COMPLETION_INDEX and JOB_COMPLETIONS name; None when neither is set."""
    index, count = environ.get(INDEX_VARIABLE), environ.get(COUNT_VARIABLE)
    if index is None and count is None:
        return None
    if index is None or count is None:
        present, absent = (INDEX_VARIABLE, COUNT_VARIABLE) if count is None else (COUNT_VARIABLE, INDEX_VARIABLE)
        raise ShardError(f"{present} is set but {absent} is not; set both (or give --shard K/N)")
    index_number, count_number = _whole_number(index), _whole_number(count)
    if index_number is None:
        raise ShardError(f"{INDEX_VARIABLE}={index!r} is not a whole number")
    if count_number is None:
        raise ShardError(f"{COUNT_VARIABLE}={count!r} is not a whole number")
    try:
        return Shard(index_number, count_number)
    except ShardError as e:
        raise ShardError(f"{INDEX_VARIABLE}={index}, {COUNT_VARIABLE}={count}: {e}") from None
