"""The backorigin.* commands for people at the console or in mitmweb: explain a URL, counters,
tombstones, pending write-backs. (`backorigin.reload` belongs to the rules file, rules.rulesfile.)"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from itertools import islice
from urllib.parse import unquote, urlsplit

from mitmproxy import command, exceptions

from backorigin.context import Context
from backorigin.decision import Stats
from backorigin.rules.explain import explain
from backorigin.tombstones.tombstones import describe
from backorigin.tombstones.tombstonesinforce import TombstonesInForce
from backorigin.writeback.supervisor import WriteBackSupervisor

logger = logging.getLogger(__name__)
LISTED_AT_MOST = 1000  # tombstones backorigin.tombstones writes to the event log


class Commands:
    def __init__(self, context: Context, stats: Stats, writeback: WriteBackSupervisor, in_force: TombstonesInForce) -> None:
        self.context = context
        self.stats = stats
        self.writeback = writeback
        self.in_force = in_force
        self.background: set[asyncio.Task[None]] = set()  # commands' work off the event loop

    @command.command("backorigin.explain")
    def explain(self, url: str) -> str:
        """Which rule would act on URL, and the origin URL or Location it would build (nothing is fetched)."""
        return explain(self.context.rulebook, url, self.context.names.vhost_domains)

    @command.command("backorigin.stats")
    def show_stats(self) -> str:
        """Counters: decisions, outcomes, bytes from origins, write-backs pending and done."""
        writeback = self.writeback
        counts = {**self.stats.counts, **{f"writebacks.{k}": v for k, v in writeback.outcomes.items()}}
        counts["writebacks.pending"] = writeback.pending
        return json.dumps(dict(sorted(counts.items())), indent=1)

    @command.command("backorigin.tombstones")
    def tombstones(self, url: str = "s3://") -> str:
        """List the keys deleted through the proxy that are never mirrored again (s3://bucket/key),
        all of them, those of s3://bucket/, or those under s3://bucket/prefix*, in the event log
        (the first LISTED_AT_MOST); read in the background, the event loop never waits for it."""
        bucket, prefix = _where(url, bucket_optional=True)
        tombstones = self.in_force.tombstones

        def listing() -> str:
            if bucket:
                found = iter([(bucket, key) for key in tombstones.keys(bucket, prefix, page=LISTED_AT_MOST + 1)])
            else:
                found = islice(iter(tombstones), LISTED_AT_MOST + 1)
            listed = describe(found)
            more = " (and more)" if len(listed) > LISTED_AT_MOST else ""
            return f"tombstones of {url}: {min(len(listed), LISTED_AT_MOST)}{more}\n" + "\n".join(listed[:LISTED_AT_MOST])

        return self._in_background(listing, f"listing the tombstones of {url} in the event log")

    @command.command("backorigin.tombstones.clear")
    def clear_tombstones(self, url: str) -> str:
        """Clear the tombstone of s3://bucket/key, or every tombstone under s3://bucket/prefix*
        (s3://bucket/* for a whole bucket); the keys mirror again. Done in the background; the event
        log says how many were cleared."""
        bucket, path = _where(url)
        prefix, every = (path[:-1], True) if path.endswith("*") else (path, False)
        tombstones = self.in_force.tombstones

        def clearing() -> str:
            if not every:
                there = (bucket, prefix) in tombstones
                if there:
                    tombstones.discard(bucket, prefix)
                return f"tombstones cleared under {url}: {int(there)}"
            cleared = 0
            while chosen := tombstones.keys(bucket, prefix, page=1000):  # ends: each round clears what it lists
                for key in chosen:
                    tombstones.discard(bucket, key)
                cleared += len(chosen)
            return f"tombstones cleared under {url}: {cleared}"

        return self._in_background(clearing, f"clearing the tombstones of {url}; the event log says how many")

    def _in_background(self, work: Callable[[], str], started: str) -> str:
        async def run() -> None:
            try:
                logger.info("%s", await asyncio.to_thread(work))
            except Exception as e:
                logger.error("%s: %s: %s", started, type(e).__name__, e)

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return started

    @command.command("backorigin.pending")
    def pending(self) -> Sequence[str]:
        """Write-backs waiting in the spool (s3://bucket/key, bytes)."""
        return [f"{upload.where} ({upload.size} bytes)" for _, upload in self.writeback.spool.pending()]


def _where(url: str, bucket_optional: bool = False) -> tuple[str, str]:
    """(bucket, key or prefix) of s3://bucket/key; CommandError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not (parts.netloc or bucket_optional):
        raise exceptions.CommandError(f"{url!r} is not s3://bucket/key or s3://bucket/prefix*")
    path = unquote(parts.path.lstrip("/"))
    return parts.netloc, path[:-1] if bucket_optional and path.endswith("*") else path
