"""nginx in the end-to-end tests (the bench's runner, bench.services.nginx.Nginx): a web-server origin
serving a folder tree, which logs every request it answers, and a front that proxies a store or
an S3 origin and hides its Server header, as a load balancer or a hardened nginx does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backorigin.tools.embedded_store import free_ports
from bench.services.nginx import NGINX_BASICS, Nginx
from bench.services.processes import Processes


@dataclass(frozen=True)
class Served:
    """A running nginx: its address, and the requests it answered (`METHOD URI STATUS` lines)."""

    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str, int]]:
        if not self.log.exists():
            return []
        return [(method, uri, int(status)) for method, uri, status in
                (line.split(" ") for line in self.log.read_text().splitlines() if line)]

    def count(self, method: str, uri: str) -> int:
        return sum(1 for m, u, _ in self.requests() if (m, u) == (method, uri))


@contextmanager
def _nginx(name: str, workdir: Path, server: str) -> Iterator[Served]:
    port = free_ports(1)[0]
    log = workdir / "requests.log"
    body = f"""
http {{
{NGINX_BASICS}
    server_tokens off;
    log_format requests '$request_method $request_uri $status';
    server {{
        listen 127.0.0.1:{port};
        access_log {log} requests;
{server}
    }}
}}
"""
    processes = Processes()
    try:
        Nginx(name, workdir, body).start(processes, [port])
        yield Served(port, log)
    finally:
        processes.close()


@contextmanager
def web_origin(workdir: Path, root: Path) -> Iterator[Served]:
    """nginx serving the folder tree `root`, as a web server does: a folder asked without its
    slash is a 301 to the same URL plus '/', and a folder with it a 403 (no index, no listing)."""
    with _nginx("web-origin", workdir, f"        root {root};\n        location / {{ }}") as served:
        yield served


@contextmanager
def hiding_front(workdir: Path, upstream: str) -> Iterator[Served]:
    """nginx in front of `upstream` (http://HOST:PORT), passing requests through unchanged (Host
    too: SigV4 signs it) and hiding the upstream's Server header (nginx sends its own, versionless)."""
    location = f"""        client_max_body_size 0;
        location / {{
            proxy_pass {upstream};
            proxy_set_header Host $http_host;
            proxy_hide_header Server;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
        }}"""
    with _nginx("front", workdir, location) as served:
        yield served
