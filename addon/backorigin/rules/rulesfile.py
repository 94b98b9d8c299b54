"""The rules file as a mitmproxy addon: the options that name it, loading and validation at
start-up, reloading when it changes (a bad edit keeps the rules in force), and
`backorigin.reload`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import command, ctx, exceptions
from mitmproxy.addonmanager import Loader

from backorigin.options import count, declare, option_names, read_settings, text
from backorigin.rules.model import DEFAULT_MAX_RULES, MAX_RULES_CEILING, RuleBook, RulesError
from backorigin.rules.parsing import load_rules

logger = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between looks at the rules file's modification time
LOGGED_NAMES = 20  # bucket entries named in the log line of a (re)load


def modified_at(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@dataclass(frozen=True)
class RulesSettings:
    path: str = text("backorigin_rules", "rules.json",
                     "Path of the rules file (OSS RoutingRule names, JSON); reloaded when it changes.")
    max_rules: int = count(
        "backorigin_max_rules", DEFAULT_MAX_RULES,
        f"Most rules a bucket may have (OSS: 5 in the documents we follow, up to {MAX_RULES_CEILING}).",
        most=MAX_RULES_CEILING)


class RulesFile:
    def __init__(self, check: Callable[[RuleBook], None] = lambda book: None) -> None:
        """`check(book)`: what other addons require of the rules with their options (RulesError when not met)."""
        self.rulebook = RuleBook(source="", buckets={})
        self.settings = RulesSettings()
        self.check = check
        self._mtime = 0.0
        self._watcher: asyncio.Task[None] | None = None

    def load(self, loader: Loader) -> None:
        declare(RulesSettings, loader)

    def configure(self, updated: set[str]) -> None:
        self.settings = read_settings(RulesSettings, ctx.options)
        if option_names(RulesSettings) & updated:
            try:
                self._read()
            except RulesError as e:
                raise exceptions.OptionsError(str(e)) from None

    def running(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch_forever())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    @command.command("backorigin.reload")
    def reload(self) -> None:
        """Read the rules file again; a bad file keeps the rules in force and logs why."""
        try:
            self._read()
        except RulesError as e:
            self._mtime = modified_at(Path(self.settings.path))  # report a bad edit once
            logger.error("rules not reloaded, the previous rules stay in force:\n%s", e)

    def _read(self) -> None:
        path = Path(self.settings.path)
        book = load_rules(path, self.settings.max_rules)
        self.check(book)
        self.rulebook = book
        self._mtime = modified_at(path)
        names = [name for name, _ in book.entries()]
        shown = ", ".join(names[:LOGGED_NAMES]) + (f" and {len(names) - LOGGED_NAMES} more" if len(names) > LOGGED_NAMES else "")
        logger.info("%s: rules for %d bucket(s): %s", book.source, len(names), shown or "none")

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            modified = modified_at(Path(self.settings.path))
            if modified and modified != self._mtime:  # 0.0: being replaced; look again next time
                self.reload()
