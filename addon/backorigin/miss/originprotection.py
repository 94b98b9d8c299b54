"""Protecting the origin at cut-over, as a child addon of BackOrigin: the options of miss.guard
(origin 404s remembered, fetches at once per origin host, circuit breakers: GuardSettings),
checked in configure and handed to the guard."""

from __future__ import annotations

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader

from backorigin.miss.guard import GuardSettings, OriginGuard
from backorigin.options import declare, option_names, read_settings

OPTIONS = option_names(GuardSettings)


class OriginProtection:
    def __init__(self, guard: OriginGuard) -> None:
        self.guard = guard

    def load(self, loader: Loader) -> None:
        declare(GuardSettings, loader)

    def configure(self, updated: set[str]) -> None:
        if OPTIONS & updated:
            self.guard.configure(read_settings(GuardSettings, ctx.options))
