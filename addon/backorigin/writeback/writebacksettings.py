"""The write-back's settings and their options (miss.mirroring declares and reads them; the
deletes read backorigin_spool_fsync too, for their tombstones beside the spool)."""

from __future__ import annotations

from dataclasses import dataclass

from backorigin.limits import SPOOL_MIN_FREE
from backorigin.options import count, flag, seconds, size


@dataclass(frozen=True)
class WriteBackSettings:
    workers: int = count("backorigin_writeback_workers", 4, "Uploads running at once.")
    max_pending: int = count(
        "backorigin_writeback_queue", 1000,
        "Most write-backs pending at once; past it a miss is answered but not stored (it mirrors again next time).")
    fsync: bool = flag(
        "backorigin_spool_fsync", False,
        "fsync a mirrored body and its manifest before the last byte of its answer goes out (survives power "
        "loss); off: they are in the page cache by then (survives a crash of the proxy, kill -9 included).")
    min_free: int = size(
        "backorigin_spool_min_free", SPOOL_MIN_FREE,
        "Free space the spool's disk keeps (e.g. 1g), while a fill writes too: a miss whose body would take the disk "
        "below it ends there (424, or a reset once answering) and gives its space back at once.")
    shutdown_timeout: float = seconds("backorigin_shutdown_timeout", 30.0, "Seconds shutdown waits for pending write-backs.")
