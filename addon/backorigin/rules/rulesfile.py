"""The rules file as a mitmproxy addon: the options that name it, loading and validation at
start-up, reloading when it changes (a bad edit keeps the rules in force), and
`backorigin.reload`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from mitmproxy import command, ctx, exceptions
from mitmproxy.addonmanager import Loader

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


class RulesFile:
    def __init__(self, check: Callable[[RuleBook], None] = lambda book: None) -> None:
        """`check(book)`: what other addons require of the rules with their options (RulesError when not met)."""
        self.rulebook = RuleBook(source="", buckets={})
        self.check = check
        self._mtime = 0.0
        self._watcher: asyncio.Task[None] | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option("backorigin_rules", str, "rules.json",
                          "Path of the rules file (OSS RoutingRule names, JSON); reloaded when it changes.")
        loader.add_option(
            "backorigin_max_rules", int, DEFAULT_MAX_RULES,
            f"Most rules a bucket may have (OSS: 5 in the documents we follow, up to {MAX_RULES_CEILING}).",
        )

    def configure(self, updated: set[str]) -> None:
        if "backorigin_max_rules" in updated and not 1 <= ctx.options.backorigin_max_rules <= MAX_RULES_CEILING:
            raise exceptions.OptionsError(
                f"backorigin_max_rules: {ctx.options.backorigin_max_rules} is outside 1..{MAX_RULES_CEILING}"
            )
        if {"backorigin_rules", "backorigin_max_rules"} & updated:
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
            self._mtime = modified_at(Path(ctx.options.backorigin_rules))  # report a bad edit once
            logger.error("rules not reloaded, the previous rules stay in force:\n%s", e)

    def _read(self) -> None:
        path = Path(ctx.options.backorigin_rules)
        book = load_rules(path, ctx.options.backorigin_max_rules)
        self.check(book)
        self.rulebook = book
        self._mtime = modified_at(path)
        names = [name for name, _ in book.entries()]
        shown = ", ".join(names[:LOGGED_NAMES]) + (f" and {len(names) - LOGGED_NAMES} more" if len(names) > LOGGED_NAMES else "")
        logger.info("%s: rules for %d bucket(s): %s", book.source, len(names), shown or "none")

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            modified = modified_at(Path(ctx.options.backorigin_rules))
            if modified and modified != self._mtime:  # 0.0: being replaced; look again next time
                self.reload()
