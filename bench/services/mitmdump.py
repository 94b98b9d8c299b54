"""mitmdump as the README runs it, with the addon or without (plain mitmdump, the reference every
figure of the addon is divided by)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.services.machine import proc_status
from bench.services.processes import Processes
from tests.support import REPO, mitmdump_command, wait_until_listening, write_back_worker


@dataclass
class Mitmdump:
    """The README's command: mitmdump [-s addon/script.py] --mode reverse:STORE --set ..."""

    name: str
    store: str
    port: int
    workdir: Path
    confdir: Path
    rules: Path | None = None  # None: plain mitmdump, no addon
    options: dict[str, str] = field(default_factory=dict)
    cpus: frozenset[int] | None = None
    ca_from: Path | None = None  # copy the CA from this confdir (saves generating one per process)
    extra_scripts: tuple[str, ...] = ()  # experiments (python -m bench --with-script FILE), a scenario's helper
    open_files: int | None = None  # RLIMIT_NOFILE, when the default will not do
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"mitmdump-{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pid(self) -> int:
        """The addon's write-back worker process."""
        return write_back_worker(self.pid)

    def command(self) -> list[str]:
        scripts = [arg for extra in self.extra_scripts for arg in ("-s", extra)]
        return mitmdump_command(f"reverse:{self.store}", self.port, self.rules,
                                {"confdir": str(self.confdir), "flow_detail": "0", **self.options}, scripts)

    def start(self, processes: Processes, ready_within: float = 40.0) -> Mitmdump:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Each process has its own confdir: the addon keeps its write-back spool there.
        if self.ca_from is not None and not self.confdir.exists():
            self.confdir.mkdir(parents=True)
            for ca_file in self.ca_from.glob("mitmproxy-*"):
                shutil.copy2(ca_file, self.confdir / ca_file.name)
        with open(self.log_path, "wb") as log_file:
            # SIGINT, as a user would stop it: the addon drains pending write-backs.
            self.process = processes.start(f"mitmdump-{self.name}", self.command(), cwd=REPO, stdout=log_file,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           stop_signal=signal.SIGINT, cpus=self.cpus, open_files=self.open_files)
        wait_until_listening(self.process, self.log, ready_within)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)
