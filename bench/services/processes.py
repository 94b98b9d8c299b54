"""Every child process of a run, registered with `Processes` and stopped in its `close()`, which
the runner calls in a `finally`. Children also get PR_SET_PDEATHSIG, so even a bench that is killed
with SIGKILL takes its nginx, mitmdump and wrk processes with it. And where they run: the CPUs
(`CpuPlan`, `set_affinity`) and the ports they listen on (`listen_ports`, `wait_for_port`)."""

from __future__ import annotations

import ctypes
import os
import random
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _child_setup(cpus: set[int] | None, open_files: int | None):
    def setup() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)
        if open_files:  # raising the hard limit takes root (as the bench's installs do)
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, max(open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    return setup


class Processes:
    """Every child process of the run, stopped in reverse start order by close()."""

    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, command: list[str], *, stop_signal: int = signal.SIGTERM,
              cpus: frozenset[int] | None = None, open_files: int | None = None, **popen) -> subprocess.Popen:
        """Start `command` as a child of the run (on `cpus`; with at least `open_files` descriptors allowed)."""
        process = subprocess.Popen(command, preexec_fn=_child_setup(set(cpus) if cpus else None, open_files), **popen)
        self._children.append((name, process, stop_signal))
        return process

    def stop(self, process: subprocess.Popen | None, timeout: float = 20.0) -> int | None:
        """Stop one child (as close() would); None, a service's process before it was started, is a no-op."""
        if process is None:
            return None
        for name, child, stop_signal in list(self._children):
            if child is process:
                self._children.remove((name, child, stop_signal))
                return _stop(child, stop_signal, timeout)
        return _stop(process, signal.SIGTERM, timeout)

    def close(self) -> None:
        while self._children:
            _, child, stop_signal = self._children.pop()
            _stop(child, stop_signal, 20.0)


def _stop(process: subprocess.Popen, stop_signal: int, timeout: float) -> int | None:
    if process.poll() is None:
        try:
            process.send_signal(stop_signal)
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
        except ProcessLookupError:
            pass
    return process.poll()


# CPUs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the proxy under test gets, and which the rest (store, origin, load generator).

    On a 2-core machine every process would otherwise share both cores with the store and
    wrk, and a proxy's throughput would depend on where the scheduler put it. With the
    proxy under test alone on one core, throughput ratios measure CPU cost per request."""

    proxy: frozenset[int] | None
    rest: frozenset[int] | None

    @staticmethod
    def make(pin: bool) -> CpuPlan:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return CpuPlan(None, None)
        return CpuPlan(frozenset(cpus[-1:]), frozenset(cpus[:-1]))

    def describe(self) -> str:
        if self.proxy is None:
            return "no CPU pinning"
        proxy, rest = ",".join(map(str, sorted(self.proxy))), ",".join(map(str, sorted(self.rest or ())))
        return f"proxy under test on CPU {proxy}, everything else on CPU {rest}"


def set_affinity(pid: int, cpus: set[int] | frozenset[int] | None) -> None:
    """Pin every thread of a process (Go and Python thread pools included)."""
    if not cpus:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


# ports -----------------------------------------------------------------------------------------


def listen_ports(count: int) -> list[int]:
    """Free loopback ports *below* the kernel's ephemeral range: a port inside it can be
    taken by an outgoing connection (the proxies open thousands) between choosing it and
    binding it, and a TIME_WAIT there makes mitmdump's bind fail."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 2048)
    start = random.randint(1025, max(1025, low - 4 * count - 200))
    chosen: list[int] = []
    port = start
    while len(chosen) < count:
        if port >= low:
            port = 1025
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                chosen.append(port)
            except OSError:
                pass
        port += 1
    return chosen


def wait_for_port(port: int, process: subprocess.Popen, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {within:g}s")
