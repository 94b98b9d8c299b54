"""What /proc says: a process's CPU time and memory, the processes a run started, a process's RSS
sampled while it works (`RssSampler`), and the CPU the rest of the machine used meanwhile
(`OtherLoad`: figures measured on a busy machine are noisier, so a run says how busy it was)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces): state, ppid, ..."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime ticks) of every process, kernel threads left out. (Not cutime: a
    reaped child's whole life would be counted again in its parent.)"""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
        except OSError:
            continue
        ppid = int(fields[1])
        if ppid != 2 and entry != "2":
            table[int(entry)] = (ppid, int(fields[11]) + int(fields[12]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """root's descendants (all processes the bench started, their workers included)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (table if table is not None else _table()).items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


class RssSampler(threading.Thread):
    """Samples VmRSS of a process every 50 ms (bounded by stop()): the peak, when it was
    reached, and one reading a second (`series`: seconds since start, MiB)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self._halt = pid, 0, threading.Event()
        self.started = time.monotonic()
        self.peak_at = 0.0  # seconds after start
        self.series: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self._halt.wait(0.05):
            try:
                rss = proc_status(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            now = time.monotonic() - self.started
            if rss > self.peak_kib:
                self.peak_kib, self.peak_at = rss, now
            if not self.series or now - self.series[-1][0] >= 1.0:
                self.series.append((round(now, 1), round(rss / 1024)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class OtherLoad:
    """CPU used by processes outside the bench's own process tree (another test suite, a
    build...), sampled every second while the bench runs. Processes shorter than one interval
    are missed, so this errs low."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[float] = []  # cores used by others, per interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._hz = os.sysconf("SC_CLK_TCK")

    def start(self) -> OtherLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @staticmethod
    def _others() -> dict[int, int]:
        table = _table()
        mine = descendants(os.getpid(), table) | {os.getpid(), 1}
        return {pid: ticks for pid, (_, ticks) in table.items() if pid not in mine}

    def _run(self) -> None:
        before = self._others()
        while not self._stop.wait(self.interval):
            after = self._others()
            used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items() if ticks >= before.get(pid, 0))
            self.samples.append(min(used / self._hz / self.interval, float(os.cpu_count() or 1)))
            before = after

    def wait_quiet(self, below: float = 0.15, within: float = 60.0) -> float:
        """Wait (at most `within` s) until other processes used < `below` cores for 3 s in a
        row; returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            recent = self.samples[-3:]
            if len(recent) == 3 and max(recent) < below:
                break
            time.sleep(self.interval)
        return time.monotonic() - started

    def summary(self) -> tuple[float, float]:
        """(mean, worst 5-second mean) cores used by other processes."""
        if not self.samples:
            return 0.0, 0.0
        windows = [sum(self.samples[i:i + 5]) / len(self.samples[i:i + 5]) for i in range(0, len(self.samples), 5)]
        return sum(self.samples) / len(self.samples), max(windows)
