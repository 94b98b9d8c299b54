"""A helper process's end in the proxy (backorigin.writeback.process.WorkerProcess): an option the
worker is given that changes at run time reaches it (an attacker set backorigin_tombstones and
backorigin_deletes at run time: accepted, yet the worker kept its first arguments)."""

from __future__ import annotations

import asyncio
import logging
import sys

from backorigin.writeback.process import WorkerProcess

# reads its input until the proxy closes it, as a worker does
WORKER = "import sys; sys.stdin.read()"


async def test_a_worker_whose_command_changed_is_started_again_with_the_new_one(caplog):
    arguments = ["first"]
    worker = WorkerProcess("test worker", lambda: [sys.executable, "-c", WORKER, *arguments], lambda: [], lambda message: None)
    caplog.set_level(logging.INFO)
    worker.start()
    await asyncio.wait_for(worker._up.wait(), 30)
    first = worker._process
    assert first is not None
    worker.refresh()  # nothing changed: the same process goes on
    assert worker._process is first and first.returncode is None
    arguments[0] = "second"
    worker.refresh()
    assert await asyncio.wait_for(first.wait(), 30) is not None
    for _ in range(300):  # started again at once (no pause as after a crash)
        if worker._process is not first and worker._process is not None and worker._up.is_set():
            break
        await asyncio.sleep(0.01)
    assert worker._process is not first and worker._running[-1] == "second"
    assert "options changed; starting it again" in caplog.text and "exited with status" not in caplog.text
    await worker.drain(1)
