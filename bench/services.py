"""The processes a benchmark run starts, all on 127.0.0.1: nginx (origin, reference proxy,
TCP balancer), mitmdump (with and without the addon), wrk and py-spy.

Every child is registered with a `Processes` registry and stopped in its `close()`, which
the runner calls in a `finally`. Children also get PR_SET_PDEATHSIG, so even a bench that
is killed with SIGKILL takes its nginx, mitmdump and wrk processes with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import REPO, mitmdump_command, wait_until_listening, write_back_worker

BIN = Path(sys.executable).parent
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"

APT_PACKAGES = ("nginx", "wrk", "libnginx-mod-stream")
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _child_setup(cpus: set[int] | None):
    def setup() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


# ---------------------------------------------------------------------------------------
# CPUs and ports


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


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Installing what the bench needs


def _missing_tools() -> list[str]:
    missing = []
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx")
    if not shutil.which("wrk"):
        missing.append("wrk")
    if not STREAM_MODULE.exists():
        missing.append("libnginx-mod-stream")
    return missing


def ensure_debian_packages() -> None:
    """nginx, wrk and nginx's stream module from Debian's packages, installed when missing."""
    missing = _missing_tools()
    if not missing:
        return
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise SystemExit(f"bench: needs {' '.join(APT_PACKAGES)} (Debian packages) and is not root; install them first")
        prefix = ["sudo", "-n"]
    log(f"installing {' '.join(APT_PACKAGES)} with apt-get (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = subprocess.run(["apt-cache", "policy", *APT_PACKAGES], capture_output=True, text=True, env=env)
    if "Candidate: (none)" in policy.stdout or "Candidate:" not in policy.stdout:
        subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    # Debian's nginx package would start a service on port 80 unless policy-rc.d forbids it;
    # --no-install-recommends keeps the install small. Our own nginx processes never use
    # /etc/nginx: each gets its own configuration and prefix.
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
        check=True, env=env, timeout=600, stdout=subprocess.DEVNULL,
    )
    still = _missing_tools()
    if still:
        raise SystemExit(f"bench: still missing after apt-get install: {', '.join(still)}")


def ensure_py_spy() -> str:
    found = BIN / "py-spy"
    if not found.exists():
        log("installing py-spy into the venv (pip)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True, timeout=300)
    return str(found)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


# ---------------------------------------------------------------------------------------
# Process registry


class Processes:
    """Every child process of the run, stopped in reverse start order by close()."""

    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, command: list[str], *, stop_signal: int = signal.SIGTERM,
              cpus: frozenset[int] | None = None, **popen) -> subprocess.Popen:
        process = subprocess.Popen(command, preexec_fn=_child_setup(set(cpus) if cpus else None), **popen)
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


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


# ---------------------------------------------------------------------------------------
# nginx


@dataclass
class Nginx:
    """One nginx master + worker(s) with its own prefix, configuration and logs."""

    name: str
    workdir: Path
    body: str  # the http {...} and/or stream {...} blocks
    workers: int = 1
    cpus: frozenset[int] | None = None
    process: subprocess.Popen | None = None

    def config(self) -> str:
        d = self.workdir
        stream = "stream {" in self.body
        lines = [
            "daemon off;",
            "master_process on;",
            f"worker_processes {self.workers};",
            f"pid {d}/nginx.pid;",
            f"error_log {d}/error.log warn;",
        ]
        if os.geteuid() == 0:
            lines.append("user root;")  # workers read the bench's private temp directory
        if stream and STREAM_MODULE.exists():
            lines.append(f"load_module {STREAM_MODULE};")
        lines.append("events { worker_connections 4096; }")
        return "\n".join(lines) + "\n" + self.body.replace("@TMP@", str(d)) + "\n"

    def start(self, processes: Processes, ports: list[int]) -> Nginx:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        log_file = open(self.workdir / "stderr.log", "wb")
        command = [nginx_binary(), "-p", str(self.workdir), "-c", str(conf), "-e", str(self.workdir / "error.log")]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx {self.name}: bad configuration:\n{check.stderr}")
        self.process = processes.start(f"nginx-{self.name}", command, stdout=log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True, stop_signal=signal.SIGTERM, cpus=self.cpus)
        log_file.close()
        for port in ports:
            wait_for_port(port, self.process, f"nginx {self.name}")
        return self


NGINX_BASICS = """
    access_log off;
    client_body_temp_path @TMP@/client_body;
    proxy_temp_path @TMP@/proxy_temp;
    fastcgi_temp_path @TMP@/fastcgi_temp;
    uwsgi_temp_path @TMP@/uwsgi_temp;
    scgi_temp_path @TMP@/scgi_temp;
    default_type application/octet-stream;
    sendfile on;"""  # every bench nginx's: no log, temp files in its own folder
HTTP_COMMON = NGINX_BASICS + """
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
"""


def origin_config(port: int, root: Path, files: dict[str, str], rates: dict[str, str] | None = None) -> str:
    """A static origin: /<dir>/<anything> serves the file files[dir], every request logged as its
    answer ends (the path first, the method last; between them the status, the bytes sent, the end
    time and the seconds it took); a dir in `rates` sends at that rate (nginx's limit_rate, "4m")."""
    rates = rates or {}
    locations = "\n".join(
        f"        location /{prefix}/ {{ {f'limit_rate {rates[prefix]}; ' if prefix in rates else ''}try_files /{name} =404; }}"
        for prefix, name in files.items()
    )
    return f"""
http {{
{HTTP_COMMON}
    log_format origin '$request_uri $status $body_bytes_sent $msec $request_time $request_method';
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {root};
        access_log @TMP@/origin-access.log origin;
{locations}
        location / {{ }}
    }}
}}
"""


def reference_proxy_config(port: int, store_port: int, origin_port: int, bucket: str) -> str:
    """nginx in front of the store: a 404 is answered from the origin (no write-back)."""
    return f"""
http {{
{HTTP_COMMON}
    upstream store {{ server 127.0.0.1:{store_port}; keepalive 256; }}
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_max_temp_file_size 0;
        location / {{
            proxy_set_header Host 127.0.0.1:{store_port};
            proxy_pass http://store;
            proxy_intercept_errors on;
            error_page 404 = @origin;
        }}
        location @origin {{
            rewrite ^/{bucket}/(.*)$ /$1 break;
            proxy_set_header Host 127.0.0.1:{origin_port};
            proxy_pass http://origin;
        }}
    }}
}}
"""


STORE_LOG = "store-requests.log"  # in the counting relay's workdir


def counting_relay_config(port: int, store_port: int) -> str:
    """nginx in front of the store that passes every request through unchanged (method, target,
    headers, Host; bodies streamed both ways) and logs one line per request: what the proxies in
    front of it asked of the store. `$upstream_status` lists one status per attempt, so a retry
    on a dropped keep-alive connection counts as the second store request it is."""
    return f"""
http {{
{HTTP_COMMON}
    log_format store '$request_method $request_uri $status "$upstream_status" "$http_range"';
    upstream store {{ server 127.0.0.1:{store_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log @TMP@/{STORE_LOG} store;
        client_max_body_size 0;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_buffering off;
        proxy_request_buffering off;
        location / {{ proxy_pass http://store; }}
    }}
}}
"""


@dataclass(frozen=True)
class StoreRequest:
    """One line of the counting relay's log."""

    method: str
    target: str
    status: int
    attempts: int  # requests the relay sent the store for it (more than 1 only after a retry)
    range: str

    @staticmethod
    def parse(line: str) -> StoreRequest | None:
        parts = line.split('"')  # METHOD TARGET STATUS "UPSTREAM STATUSES" "RANGE"
        try:
            method, target, status = parts[0].split()
            upstream, range_ = parts[1], parts[3]
        except (IndexError, ValueError):
            return None
        statuses = [s for s in upstream.replace(":", ",").split(",") if s.strip() and s.strip() != "-"]
        return StoreRequest(method, target, int(status) if status.isdigit() else 0, len(statuses),
                            "" if range_ == "-" else range_)


class StoreLog:
    """The counting relay's log, read from a mark: the store requests made since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mark = 0

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def mark(self) -> None:
        self._mark = self.size()

    def since_mark(self) -> list[StoreRequest]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self._mark)
            text = f.read().decode("latin-1")
        found = (StoreRequest.parse(line) for line in text.splitlines())
        return [request for request in found if request is not None]


def balancer_config(listeners: dict[int, list[int]]) -> str:
    """nginx stream: each listening port balances TCP connections over its backends."""
    blocks = []
    for listen, backends in listeners.items():
        servers = " ".join(f"server 127.0.0.1:{b};" for b in backends)
        blocks.append(
            f"    upstream pool{listen} {{ {servers} }}\n"
            f"    server {{ listen 127.0.0.1:{listen} backlog=4096; proxy_pass pool{listen}; }}"
        )
    return "stream {\n" + "\n".join(blocks) + "\n}\n"


# ---------------------------------------------------------------------------------------
# mitmdump


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
    extra_scripts: tuple[str, ...] = ()  # experiments only (python -m bench --with-script FILE)
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
                                           stop_signal=signal.SIGINT, cpus=self.cpus)
        wait_until_listening(self.process, self.log, ready_within)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)


# ---------------------------------------------------------------------------------------
# wrk


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    errors: int  # socket errors + timeouts
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_request(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0


def wrk(url: str, connections: int, seconds: float, unique_prefix: str | None = None, threads: int = 1) -> WrkResult:
    """wrk for `seconds` against url; with unique_prefix every request asks a new path
    (prefix + thread + counter), so every GET of a missing key is a fresh miss."""
    env = {**os.environ, "BENCH_PATH_PREFIX": unique_prefix or ""}
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "20s",
        "-s", str(WRK_SCRIPT), url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 60,
                          preexec_fn=_die_with_parent)  # inherits the bench's own CPU affinity
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            raw = json.loads(line[6:])
            return WrkResult(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                bytes=raw["bytes"],
                errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
                non_2xx=raw["status"],
                p50_ms=raw["p50"] / 1000,
                p90_ms=raw["p90"] / 1000,
                p99_ms=raw["p99"] / 1000,
                max_ms=raw["max"] / 1000,
                mean_ms=raw["mean"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


# ---------------------------------------------------------------------------------------
# Other load on the machine


class OtherLoad:
    """CPU used by processes outside the bench's own process tree (another test suite, a
    build...), sampled every second while the bench runs: figures measured on a busy
    machine are noisier, so the run says how busy it was."""

    def __init__(self, interval: float = 1.0) -> None:
        import threading

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
    def _snapshot() -> dict[int, tuple[int, int]]:
        """pid -> (ppid, utime+stime) of every user-space process. (Not cutime: a reaped
        child's whole life would be counted again in its parent; processes shorter than
        one interval are missed instead, so this errs low.)"""
        table: dict[int, tuple[int, int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            ppid = int(fields[1])
            if ppid == 2 or int(entry) == 2:  # kernel threads
                continue
            table[int(entry)] = (ppid, int(fields[11]) + int(fields[12]))
        return table

    def _others(self, table: dict[int, tuple[int, int]]) -> dict[int, int]:
        mine = {os.getpid()}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _) in table.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        return {pid: ticks for pid, (_, ticks) in table.items() if pid not in mine and pid != 1}

    def _run(self) -> None:
        before = self._others(self._snapshot())
        while not self._stop.wait(self.interval):
            after = self._others(self._snapshot())
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
