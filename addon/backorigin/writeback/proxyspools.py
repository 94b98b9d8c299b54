"""One spool per proxy: the default spool's name, the claim a running proxy holds on its spool,
and the spools that no running proxy holds but that still hold work.

The default spool is CONFDIR/backorigin-spools/NAME, NAME made of each proxy mode's kind and
listen address (`reverse-127.0.0.1-8080`): two proxies running on one machine cannot listen on
the same address, so they never share pending write-backs or tombstones by accident, and a
restart on the same address resumes its own spool. A random name would lose them at every
restart; the store's URL is left out because each write-back carries its endpoint, so a new name
for the same store does not strand them.

A running proxy claims its spool (an exclusive flock on SPOOL/owner, released when the process
ends, `kill -9` included); a second proxy given the same spool (one `backorigin_spool_dir` for
two, or two proxies on port 0) is refused at start-up instead of sharing it.

Spools do not pile up: a proxy that ends with nothing in its spool (no pending or failed
write-back, no tombstone) removes it, also when it stops at start-up (a port in use), so only
proxies that left work behind leave a folder. `backorigin spools` lists them (`inventory`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mitmproxy.proxy.mode_specs import ProxyMode

from backorigin.tombstones.journal import count_in

SPOOLS = "backorigin-spools"  # CONFDIR/backorigin-spools/NAME: one default spool per proxy
LEGACY_SPOOL = "backorigin-spool"  # the one default spool every proxy shared before
OWNER = "owner"  # SPOOL/owner: the running proxy's flock, and its pid and address for messages


def proxy_name(modes: Sequence[str], listen_host: str = "", listen_port: int | None = None) -> str:
    """`KIND-HOST-PORT` per mode (mitmproxy's `mode`, `listen_host` and `listen_port` options;
    a mode's own `@HOST:PORT` wins), joined with `+`. An empty host is `all` (every address)."""
    names = []
    for spec in modes or ["regular"]:
        mode = ProxyMode.parse(spec)
        host = mode.listen_host(listen_host or None) or "all"
        port = mode.listen_port(listen_port)
        names.append(f"{mode.type_name}-{host}-{'noport' if port is None else port}")
    return re.sub(r"[^A-Za-z0-9.+-]", "_", "+".join(names))


def default_spool(confdir: Path, modes: Sequence[str], listen_host: str = "", listen_port: int | None = None) -> Path:
    return Path(confdir).expanduser() / SPOOLS / proxy_name(modes, listen_host, listen_port)


class SpoolInUse(Exception):
    pass


_claimed: dict[Path, tuple[int, int]] = {}  # spool -> (owner file descriptor, claims in this process)


def claim(spool: Path, description: str) -> None:
    """Hold `spool` for this process until release() (or the process's end); SpoolInUse when
    another process holds it. Claims in one process nest (a script reload, tests)."""
    spool = spool.resolve()
    if spool in _claimed:
        fd, count = _claimed[spool]
        _claimed[spool] = (fd, count + 1)
        return
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(spool / OWNER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 1024).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolInUse(f"{spool} is in use by another proxy (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {description}\n".encode())
    _claimed[spool] = (fd, 1)
    atexit.register(release, spool)  # mitmproxy exits without `done` when it cannot listen


def release(spool: Path) -> None:
    """Let go of the spool (the last claim of this process), removing it when it holds nothing."""
    spool = spool.resolve()
    if spool not in _claimed:
        return
    fd, count = _claimed.pop(spool)
    if count > 1:
        _claimed[spool] = (fd, count - 1)
        return
    remove_if_empty(spool)  # still holding the flock: no proxy is starting on it now
    os.close(fd)  # closing the last descriptor drops the flock


def remove_if_empty(spool: Path) -> bool:
    """Remove a spool that holds nothing but its owner file and empty folders (failed/,
    tombstones/pending/, writethrough/downloads/...); anything else (a body, a manifest, a
    tombstone, a journal entry) keeps it."""
    if not spool.is_dir():
        return False
    folders = []
    for top, dirs, files in os.walk(spool):
        if any(not (Path(top) == spool and name == OWNER) for name in files):
            return False
        folders += [Path(top) / name for name in dirs]
    with contextlib.suppress(OSError):  # another proxy may be creating it again this moment
        for folder in reversed(folders):  # the deepest first
            folder.rmdir()
        (spool / OWNER).unlink(missing_ok=True)
        spool.rmdir()
        return True
    return False


@dataclass(frozen=True)
class SpoolState:
    """What a spool holds: pending write-backs nobody uploads until a proxy runs with it,
    write-backs the store refused for good, tombstones, writes not yet at the origin
    (write-through); and the pid of the proxy using it."""

    directory: Path
    pending: int
    tombstones: int
    failed: int
    holder: int | None  # the running proxy's pid, None when no proxy uses it
    legacy: bool  # CONFDIR/backorigin-spool, the shared default of earlier versions
    writes: int = 0  # write-through journal entries (SPOOL/writethrough)

    @property
    def empty(self) -> bool:
        return not (self.pending or self.tombstones or self.failed or self.writes)


def inventory(confdir: Path) -> list[SpoolState]:
    """Every spool in the confdir: CONFDIR/backorigin-spools/*, and the legacy shared one."""
    confdir = Path(confdir).expanduser()
    candidates = [(confdir / LEGACY_SPOOL, True)]
    if (confdir / SPOOLS).is_dir():
        candidates += [(path, False) for path in sorted((confdir / SPOOLS).iterdir()) if path.is_dir()]
    return [
        SpoolState(directory, _count(directory, "*.json"), count_in(directory / "tombstones"),
                   _count(directory / "failed", "*.json"), _holder(directory), legacy, _count(directory / "writethrough", "*.json"))
        for directory, legacy in candidates if directory.is_dir()
    ]


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern))


def left_behind(confdir: Path, mine: Path) -> list[SpoolState]:
    """The spools no running proxy holds that still hold pending write-backs, tombstones or writes
    not yet at the origin."""
    return [state for state in inventory(confdir) if state.directory.resolve() != mine.resolve() and state.holder is None
            and (state.pending or state.tombstones or state.writes)]


def _holder(spool: Path) -> int | None:
    """The pid named in SPOOL/owner when that process is alive (read, never locked: taking the
    lock even for a moment could refuse a proxy starting at that moment)."""
    try:
        pid = int((spool / OWNER).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def describe(left: SpoolState) -> str:
    """One log line: what the spool holds and how to resume it."""
    held = " and ".join(part for part in (
        f"{left.pending} pending write-back(s)" if left.pending else "",
        f"{left.tombstones} tombstone(s)" if left.tombstones else "",
        f"{left.writes} write(s) not yet at the origin (write-through)" if left.writes else "") if part)
    whose = "the spool every proxy shared before backorigin_spool_dir became per proxy" if left.legacy else "another proxy's spool"
    return (f"{left.directory} ({whose}) holds {held} and no running proxy uses it; to resume it, run one proxy "
            f"with --set backorigin_spool_dir={left.directory}")
