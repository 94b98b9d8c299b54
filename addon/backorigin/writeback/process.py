"""A helper process of the proxy's (the write-back worker, the write-through worker) and both ends
of the pipe between them.

The proxy's end, `WorkerProcess`, starts the process, starts another when it dies, writes it JSON
lines on its stdin (a greeting first: what every new process needs), hands each JSON line it
writes on stdout to `heard`, relays its log lines (stderr) into the proxy's log, and drains it at
shutdown. The worker's end: `commands` (the lines on stdin, until the proxy is gone), `reply` (a
line on stdout) and `run` (logging, signals and the exit every worker shares). Whatever a worker
has not finished is on disk (the spool, the journal) for the next one, so killing either process
loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

RESTART_AFTER = 1.0  # seconds before a worker that died is started again
LOG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
              "CRITICAL": logging.CRITICAL}
Message = dict[str, Any]


class WorkerProcess:
    """The proxy's end: `command()` run as `name` (the log calls it that), greeted with `greeting()`
    whenever one starts, its every line handed to `heard` (on the event loop)."""

    def __init__(self, name: str, command: Callable[[], list[str]], greeting: Callable[[], list[Message]],
                 heard: Callable[[Message], None]) -> None:
        self.name = name
        self._command = command
        self._greeting = greeting
        self._heard = heard
        self._process: asyncio.subprocess.Process | None = None
        self._unsent: list[bytes] = []  # lines kept for a worker that is not up yet
        self._supervisor: asyncio.Task[None] | None = None
        self._up = asyncio.Event()  # a worker process is running
        self._stopping = False
        self._running: list[str] = []  # the command the running worker was started with
        self._refreshing = False  # stopped by refresh: started again at once, without a warning

    @property
    def started(self) -> bool:
        return self._supervisor is not None

    def send(self, message: Message, keep: bool = False) -> None:
        """A line for the worker (starting it when none runs yet). While none runs, a line to `keep`
        waits for the next one; the others need not (the greeting tells a new worker what it needs)."""
        line = json.dumps(message).encode() + b"\n"
        process = self._process
        if process is not None and process.returncode is None and process.stdin is not None:
            process.stdin.write(line)
        elif keep:
            self._unsent.append(line)
        self.start()

    def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.ensure_future(self._supervise())

    def refresh(self) -> None:
        """Start the worker again if its command changed since it started (an option it is given
        was changed at run time); what it had not finished resumes from disk, as after a kill."""
        process = self._process
        if process is not None and process.returncode is None and self._command() != self._running:
            logger.info("the %s's options changed; starting it again", self.name)
            self._refreshing = True
            process.terminate()

    async def drain(self, timeout: float) -> None:
        """Let the worker finish what it is doing for up to `timeout` seconds, then stop it; what is
        left stays on disk for the next start."""
        self._stopping = True
        supervisor = self._supervisor
        if supervisor is None:
            return
        up = asyncio.ensure_future(self._up.wait())  # a worker being started: drain it too
        await asyncio.wait([up, supervisor], return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        process = self._process
        if process is not None and process.returncode is None and process.stdin is not None:
            self.send({"drain": timeout})
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), timeout + 10)
            except TimeoutError:
                logger.warning("the %s did not stop; killing it (its work stays on disk for the next start)", self.name)
                process.kill()
        await asyncio.gather(supervisor, return_exceptions=True)

    async def _supervise(self) -> None:
        """Run the worker; start another when it dies."""
        while not self._stopping:
            # a session of its own: the terminal's Ctrl-C, meant for mitmdump, would reach the worker
            # too, even before it can ignore it (while it still imports), and kill it mid-drain; the
            # proxy tells it when to stop, and it stops by itself when the proxy is gone (its input ends)
            self._running = self._command()
            self._process = process = await asyncio.create_subprocess_exec(
                *self._running, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
            assert process.stdin is not None and process.stdout is not None and process.stderr is not None
            self._up.set()
            relaying = asyncio.ensure_future(self._relay_log(process.stderr))
            unsent, self._unsent = self._unsent, []
            process.stdin.writelines([*(json.dumps(line).encode() + b"\n" for line in self._greeting()), *unsent])
            while line := await process.stdout.readline():
                self._heard(json.loads(line))
            await process.wait()
            await relaying
            self._up.clear()
            if self._refreshing:
                self._refreshing = False
            elif not self._stopping:
                logger.warning("the %s exited with status %s; starting another", self.name, process.returncode)
                await asyncio.sleep(RESTART_AFTER)

    async def _relay_log(self, stderr: asyncio.StreamReader) -> None:
        """The worker's log lines ("LEVEL message") into the proxy's log, so they show in mitmproxy's
        event log (mitmweb, the console) rather than on the terminal; anything else (a traceback)
        as a warning."""
        while line := await stderr.readline():
            level, _, message = line.decode("utf-8", "replace").rstrip().partition(" ")
            if level in LOG_LEVELS:
                logger.log(LOG_LEVELS[level], "%s: %s", self.name, message)
            else:
                logger.warning("%s: %s %s", self.name, level, message)


# the worker's end ------------------------------------------------------------------------------


async def commands() -> AsyncIterator[Message]:
    """The proxy's lines on stdin, until it closes it (it drains the worker, or it is gone)."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


def reply(message: Message) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run(serve: Coroutine[Any, Any, None]) -> NoReturn:
    """Run a worker's `serve` and leave: log lines on stderr as WorkerProcess relays them, and
    Ctrl-C ignored (the proxy decides when it stops; run by hand, Ctrl-C reaches it too)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    for library in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(library).setLevel(logging.WARNING)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(serve)
    # Work still under way would hold the interpreter's exit until it ends (its thread is
    # joined); it is still on disk and resumes at the next start, so leave now.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
