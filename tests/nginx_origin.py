"""nginx as a test's origin: one body (the scripted origin's `sized` bytes, so tests.clients.sized_sha256
tells what a client must get) served under the locations a test gives, and nginx's own access log
to count the origin's GETs and say when each ended."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backorigin.tools.embedded_store import free_ports
from bench.services.nginx import HTTP_COMMON, Nginx, nginx_binary
from bench.services.processes import Processes
from tests.origin_server import sized_body


@dataclass(frozen=True)
class NginxOrigin:
    nginx: Nginx
    base: str  # http://127.0.0.1:PORT/

    def gets(self, path: str) -> list[float]:
        """When each GET of `path` ended: nginx writes a line as an answer's last byte goes out
        ($request_uri $status $body_bytes_sent $msec $request_method)."""
        log = self.nginx.workdir / "origin-access.log"
        lines = [line.split() for line in (log.read_text().splitlines() if log.exists() else [])]
        return [float(f[3]) for f in lines if f[0] == path and f[-1] == "GET"]


def nginx_processes() -> Iterator[Processes]:
    """A module fixture's body: the registry the test's nginx processes are started in and stopped by."""
    if not Path(nginx_binary()).exists():
        pytest.fail("these tests need Debian's nginx (.ci/run installs it as root)")
    registry = Processes()
    yield registry
    registry.close()


def start_origin(processes: Processes, root: Path, size: int, locations: str) -> NginxOrigin:
    """nginx serving `size` bytes of the `sized` body as /body.bin; `locations` are the server's
    location blocks (each ends in `try_files /body.bin =404;`)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "body.bin", "wb") as out:
        for piece in sized_body(size):
            out.write(piece)
    port = free_ports(1)[0]
    config = f"""
http {{
{HTTP_COMMON}
    log_format origin '$request_uri $status $body_bytes_sent $msec $request_method';
    server {{
        listen 127.0.0.1:{port};
        root {root};
        access_log @TMP@/origin-access.log origin;
{locations}
    }}
}}
"""
    return NginxOrigin(Nginx("origin", root / "nginx", config).start(processes, [port]), f"http://127.0.0.1:{port}/")
