"""Single flight: concurrent callers with one key share one run of a coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._running

    async def do(self, key: Hashable, run: Callable[[], Awaitable[T]]) -> T:
        """Run `run()` unless a run for `key` is under way; either way return its result."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(run())
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        # shield: one caller going away (client disconnect) must not cancel the others' run.
        return await asyncio.shield(task)
