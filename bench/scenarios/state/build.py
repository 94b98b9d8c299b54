"""How each state of scenario 10 is made, fast: written before the proxy starts, in the formats it
reads at start, rather than through millions of requests.

- Tombstones: SPOOL/tombstones/journal, one record per key in the journal's own format
  (backorigin.tombstones.journal.record); the proxy reads and indexes it at start as it would its own.
- Pending write-backs: SPOOL/<id>.body and SPOOL/<id>.json (an ObjectUpload, as the spool writes
  it); the proxy resumes them at start. Their store is `BlackHole`, an address that accepts
  connections and never answers, so they stay pending: the worker's upload threads wait on it
  (at most 4 at once) and the rest stay queued behind them, for as long as the scenario runs. The
  proxy holds an open descriptor for each (miss.fill.Fill keeps its body open until it lands), so
  its limit is raised to fit (`descriptors_allowed`).
- Remembered 404s: none of their state is on disk, so remember_404s.py (loaded with -s after the
  addon) fills the addon's own NotFound at start, as if that many misses had found nothing.
- Rules: a rules file of N buckets of 20 rules each (or N - 1 of them and a pattern entry that
  covers the bucket the requests go to).
"""

from __future__ import annotations

import base64
import hashlib
import json
import resource
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from email.utils import formatdate
from pathlib import Path
from types import TracebackType

from backorigin.tombstones.journal import JOURNAL, record
from backorigin.writeback.spool import LAST_MODIFIED_META, ORIGIN_URL_META, ObjectUpload
from tests.support import mirror_rule, write_rules

LISTED_KEYS = 2000  # keys of the merged listing's S3 origin, listed/00000 ... listed/01999
RULES_PER_BUCKET = 20
PENDING_BODY = b"p" * 1024


def listed_key(i: int) -> str:
    return f"listed/{i:05d}"


def write_tombstones(spool: Path, bucket: str, count: int) -> None:
    """`count` tombstones of `bucket`: one in every hundred of the listed keys (the merged listing
    hides them) and then keys no request asks for."""
    folder = spool / "tombstones"
    folder.mkdir(parents=True, exist_ok=True)
    listed = [listed_key(i) for i in range(0, LISTED_KEYS, 100)][:count]
    with open(folder / JOURNAL, "wb") as journal:
        for key in listed:
            journal.write(record("add", bucket, key))
        for i in range(count - len(listed)):
            journal.write(record("add", bucket, f"gone/{i:07d}"))


def write_pending(spool: Path, store: str, bucket: str, count: int) -> None:
    """`count` spooled write-backs of 1 KiB objects to `store` (body first, then its manifest)."""
    spool.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(PENDING_BODY)  # S3's Content-MD5 and ETag
    md5, etag = base64.b64encode(digest.digest()).decode(), f'"{digest.hexdigest()}"'
    metadata = {ORIGIN_URL_META: "http://127.0.0.1/pending", LAST_MODIFIED_META: formatdate(usegmt=True)}

    def spool_one(i: int) -> None:
        name = f"{i:032x}"  # as the spool names them: 32 hex digits
        (spool / f"{name}.body").write_bytes(PENDING_BODY)
        upload = ObjectUpload(store, bucket, f"pending/{i:07d}", {"content-type": "application/octet-stream"}, metadata,
                              len(PENDING_BODY), md5, etag)
        (spool / f"{name}.json").write_text(json.dumps(asdict(upload)))

    with ThreadPoolExecutor(8) as pool:  # file creation waits on the file system, not the GIL
        list(pool.map(spool_one, range(count), chunksize=500))


def descriptors_allowed(wanted: int) -> int:
    """The open descriptors a child of this process may have: `wanted`, when this process may raise
    its hard limit that far (root with CAP_SYS_RESOURCE), else its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted <= hard:
        return wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
    except (ValueError, OSError):  # a container without the capability
        return hard
    return wanted


def pending_in(spool: Path) -> int:
    """Write-backs still spooled (their manifests)."""
    return sum(1 for _ in spool.glob("*.json"))


def twenty_rules(origin: str, listed_origin: str) -> list[dict]:
    """A bucket's rules: 18 Mirror rules for prefixes no request asks for, then one for listed/
    from an S3 origin (the merged listing's), then one for every other key from `origin`; so a
    miss tries all 20, a listing merges the 19th."""
    rules = [mirror_rule(n, origin, prefix=f"unused-{n:02d}/") for n in range(1, RULES_PER_BUCKET - 1)]
    return [*rules, mirror_rule(RULES_PER_BUCKET - 1, listed_origin, prefix="listed/"), mirror_rule(RULES_PER_BUCKET, origin)]


def write_bucket_rules(path: Path, bucket: str, buckets: int, origin: str, listed_origin: str, pattern: bool = False) -> Path:
    """`buckets` entries of twenty_rules: `bucket`'s own and others' (or, with `pattern`, the
    others' and "bucket*", which covers `bucket`)."""
    rules = twenty_rules(origin, listed_origin)
    entries = {f"{bucket}-other-{i:04d}": rules for i in range(buckets - 1)}
    entries[f"{bucket}*" if pattern else bucket] = rules
    return write_rules(path, entries)


class BlackHole:
    """A loopback address that takes connections and never answers (nobody accepts them): uploads
    to it wait until their timeout, and then are retried."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._socket.close()
