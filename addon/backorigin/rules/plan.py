"""What the store's answer to a GET or HEAD of an object means to the rules. Pure.

The addon reads the store's answer in two places, before mitmproxy forwards the request (the
store probe) and in the response hook (replays, dry runs, late misses); both read it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backorigin.s3.addressing import error_code_of


def shows_object(status: int) -> bool:
    """The store has the object: it served it, or judged a condition or range against it."""
    return 200 <= status < 300 or status in (304, 412, 416)


def rules_status(method: str, status: int, body: bytes, unrecorded_replay: bool = False) -> int | None:
    """The store's status as the rules see it; None when no rule may act on it. A GET's 404
    counts only as NoSuchKey (not NoSuchBucket); a HEAD's 404 has no body to tell, nor has the
    empty 404 that `--server-replay` gives a request it has no recording of."""
    if status == 404 and method == "GET" and not unrecorded_replay and error_code_of(body) != "NoSuchKey":
        return None
    return status


def may_hide_a_miss(status: int, body: bytes, denied_is_miss: bool) -> bool:
    """A 403 AccessDenied that backorigin_403_is_miss asks the proxy to look behind (stores
    answer 403, not 404, to callers without ListBucket). Other 403s (a bad signature) never are."""
    return denied_is_miss and status == 403 and error_code_of(body) == "AccessDenied"


def recorded_status(recorded: Mapping[str, Any] | None) -> int | None:
    """The store's status kept in a replayed flow's recorded decision. Recordings made before
    store_status was kept say only that a mirror acted, which it did only on a 404."""
    if not recorded:
        return None
    return recorded.get("store_status") or (404 if recorded.get("action") == "mirror" else None)
