"""The backorigin.* commands for people at the console or in mitmweb: explain a URL, counters,
pending write-backs. (`backorigin.reload` belongs to the rules file, addon.rulesfile.)"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mitmproxy import command

from backorigin.explain import explain

if TYPE_CHECKING:
    from backorigin.backorigin import BackOrigin


class Commands:
    def __init__(self, core: BackOrigin) -> None:
        self.core = core

    @command.command("backorigin.explain")
    def explain(self, url: str) -> str:
        """Which rule would act on URL, and the origin URL or Location it would build (nothing is fetched)."""
        return explain(self.core.rulebook, url, self.core.vhost_domains)

    @command.command("backorigin.stats")
    def show_stats(self) -> str:
        """Counters: decisions, outcomes, bytes from origins, write-backs pending and done."""
        writeback = self.core.mirror.writeback
        counts = {**self.core.stats.counts, **{f"writebacks.{k}": v for k, v in writeback.outcomes.items()}}
        counts["writebacks.pending"] = writeback.pending
        return json.dumps(dict(sorted(counts.items())), indent=1)

    @command.command("backorigin.pending")
    def pending(self) -> Sequence[str]:
        """Write-backs waiting in the spool (s3://bucket/key, bytes)."""
        return [f"{upload.where} ({upload.size} bytes)" for _, upload in self.core.mirror.writeback.spool.pending()]
