"""The backorigin.* commands for people at the console or in mitmweb: explain a URL, counters,
tombstones, pending write-backs. (`backorigin.reload` belongs to the rules file, rules.rulesfile.)"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from mitmproxy import command, exceptions

from backorigin.context import Context
from backorigin.decision import Stats
from backorigin.deletes.addon import Deletes
from backorigin.deletes.tombstones import describe
from backorigin.miss.addon import Mirroring
from backorigin.rules.explain import explain


class Commands:
    def __init__(self, context: Context, stats: Stats, mirroring: Mirroring, deletes: Deletes) -> None:
        self.context = context
        self.stats = stats
        self.mirroring = mirroring
        self.deletes = deletes

    @command.command("backorigin.explain")
    def explain(self, url: str) -> str:
        """Which rule would act on URL, and the origin URL or Location it would build (nothing is fetched)."""
        return explain(self.context.rulebook, url, self.context.names.vhost_domains)

    @command.command("backorigin.stats")
    def show_stats(self) -> str:
        """Counters: decisions, outcomes, bytes from origins, write-backs pending and done."""
        writeback = self.mirroring.mirror.writeback
        counts = {**self.stats.counts, **{f"writebacks.{k}": v for k, v in writeback.outcomes.items()}}
        counts["writebacks.pending"] = writeback.pending
        return json.dumps(dict(sorted(counts.items())), indent=1)

    @command.command("backorigin.tombstones")
    def tombstones(self) -> Sequence[str]:
        """Keys deleted through the proxy that are never mirrored again (s3://bucket/key)."""
        return describe(iter(self.deletes.tombstones))

    @command.command("backorigin.tombstones.clear")
    def clear_tombstones(self, url: str) -> int:
        """Clear the tombstone of s3://bucket/key, or every tombstone under s3://bucket/prefix*
        (s3://bucket/* for a whole bucket); the keys mirror again. Returns how many were cleared."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise exceptions.CommandError(f"{url!r} is not s3://bucket/key or s3://bucket/prefix*")
        path = unquote(parts.path.lstrip("/"))
        prefix, every = (path[:-1], True) if path.endswith("*") else (path, False)
        tombstones = self.deletes.tombstones
        chosen = [(bucket, key) for bucket, key in tombstones
                  if bucket == parts.netloc and (key.startswith(prefix) if every else key == prefix)]
        for bucket, key in chosen:
            tombstones.discard(bucket, key)
        return len(chosen)

    @command.command("backorigin.pending")
    def pending(self) -> Sequence[str]:
        """Write-backs waiting in the spool (s3://bucket/key, bytes)."""
        return [f"{upload.where} ({upload.size} bytes)" for _, upload in self.mirroring.mirror.writeback.spool.pending()]
