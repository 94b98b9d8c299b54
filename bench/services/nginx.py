"""nginx in the bench's roles, each with its own prefix, configuration and logs (never
/etc/nginx): the static origin, the reference proxy (nginx's own back-to-origin), the counting
relay in front of the store and its log (`StoreLog`), and the TCP balancer (`stream`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.services.processes import Processes, wait_for_port

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


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
