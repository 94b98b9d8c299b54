"""The write-through's settings and their options (writethrough.writethrough declares and reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from backorigin.options import count, flag


@dataclass(frozen=True)
class WriteThroughSettings:
    workers: int = count("backorigin_writethrough_workers", 4,
                         "Keys the write-through worker copies to origins at once (buckets with \"WriteThrough\": true).")
    fsync: bool = flag(
        "backorigin_writethrough_fsync", True,
        "fsync each write-through journal entry before the write's answer goes out (a write acknowledged reaches "
        "the origin across a power loss); off: the page cache has it by then (across kill -9 of any process).")
