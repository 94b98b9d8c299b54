"""BackOrigin's own settings and their options: how a GET/HEAD of an object is decided."""

from __future__ import annotations

from dataclasses import dataclass

from backorigin.options import choice, flag

HEAD_ON_MISS = ("object", "oss")


@dataclass(frozen=True)
class BackOriginSettings:
    head_on_miss: str = choice(
        "backorigin_head_on_miss", "object", HEAD_ON_MISS,
        "HEAD of a missing object: 'object' answers it as the object will answer (it is fetched and stored), "
        "for S3 tools that HEAD before they GET; 'oss' answers 404 unless the rule has MirrorAllowHeadObject.")
    denied_is_miss: bool = flag(
        "backorigin_403_is_miss", False,
        "Treat a GET's 403 AccessDenied as a miss once a HEAD with the proxy's own credentials finds no object "
        "(stores answer 403 instead of 404 to callers without ListBucket).")
    private_origins: bool = flag(
        "backorigin_403_is_miss_private_origins", False,
        "With backorigin_403_is_miss, allow Mirror rules that reach a private origin (MirrorAuth, or any "
        "MirrorHeaders.Set, such as a token): anyone the store denies then gets the private origin's objects. "
        "Refused unless this says so.")
    dry_run: bool = flag("backorigin_dry_run", False, "Decide and annotate only: never contact the origin, never store.")
    debug_header: bool = flag("backorigin_debug_header", False, "Add an x-backorigin header with the decision to answers.")
