"""A scripted origin for the tests: a stdlib HTTP server whose answer is chosen by a
path segment after the first (/<dir>/[prefix/]<scenario>/...), recording every request."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

STORABLE = {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Disposition": 'inline; filename="object.txt"',
    "Cache-Control": "max-age=60",
    "Expires": "Wed, 21 Oct 2037 07:28:00 GMT",
    "Content-Language": "en",
    "Access-Control-Allow-Origin": "*",
}
LAST_MODIFIED = "Tue, 01 Jan 2030 00:00:00 GMT"
BREAK_AFTER = 2.0  # seconds the `shortsized` body stalls before the origin hangs up
PRIVATE = {"X-Origin-Private": "secret", "Set-Cookie": "session=abc", "ETag": '"origin-etag"'}


def body_for(path: str) -> bytes:
    """The deterministic body the origin serves for a path (what tests compare against)."""
    return f"origin body for {path}\n".encode() * 8


_BLOCK = bytes(range(256)) * 4096  # 1 MiB


def sized_body(size: int):
    """The body of the `sized` scenario, 1 MiB at a time: block i is _BLOCK rotated by i."""
    sent, index = 0, 0
    while sent < size:
        shift = index % 256
        piece = (_BLOCK[shift:] + _BLOCK[:shift])[: size - sent]
        yield piece
        sent += len(piece)
        index += 1


def sized_md5(size: int) -> str:
    """The hex MD5 of the `sized` body of `size` bytes."""
    digest = hashlib.md5()
    for piece in sized_body(size):
        digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    method: str = "GET"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-body (the proxy stops reading a large object) is normal."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class ScriptedOrigin:
    """`forced` makes every path answer with that scenario (a healthy secondary origin)."""

    def __init__(self, forced: str | None = None) -> None:
        self.forced = forced
        self.received: list[Received] = []
        self.gate = threading.Event()
        self.slow_seconds = 3.0
        self.in_flight = 0  # GETs being answered now, and the most at once
        self.most_in_flight = 0
        self._counting = threading.Lock()
        handler = type("Handler", (_Handler,), {"origin": self})
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ScriptedOrigin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_for(self, fragment: str) -> list[Received]:
        return [r for r in self.received if fragment in r.path]

    def count(self, method: str, fragment: str) -> int:
        """How many `method` requests for paths containing `fragment` the origin received."""
        return sum(1 for r in self.requests_for(fragment) if r.method == method)


class _Handler(BaseHTTPRequestHandler):
    origin: ScriptedOrigin
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        origin = self.origin
        origin.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}))
        path = urlsplit(self.path).path
        parts = path.split("/")
        # the first segment after /<dir>/ that names a scenario (so rules may add prefixes)
        named = [p for p in parts[2:] if hasattr(self, "scenario_" + p.replace("-", "_"))]
        scenario = origin.forced or (named[0] if named else "ok")
        with origin._counting:
            origin.in_flight += 1
            origin.most_in_flight = max(origin.most_in_flight, origin.in_flight)
        try:
            getattr(self, "scenario_" + scenario.replace("-", "_"))(path)
        finally:
            with origin._counting:
                origin.in_flight -= 1

    def do_HEAD(self) -> None:
        """The headers a GET of an ok path would have, no body."""
        self.origin.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, "HEAD"))
        path = urlsplit(self.path).path
        self.send_response(200)
        for name, value in {**STORABLE, **PRIVATE, "Content-Length": str(len(body_for(path)))}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if not any(h.lower() in ("content-length", "transfer-encoding") for h in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def scenario_ok(self, path: str) -> None:
        self._send(200, body_for(path), {**STORABLE, **PRIVATE})

    def scenario_big(self, path: str) -> None:
        size = int(path.split("/")[3])
        self._send(200, bytes(i % 251 for i in range(size)), {"Content-Type": "application/octet-stream"})

    def scenario_missing(self, path: str) -> None:
        self._send(404, b"not here", {"Content-Type": "text/plain"})

    def scenario_error500(self, path: str) -> None:
        self._send(500, b"boom", {"Content-Type": "text/plain"})

    def scenario_forbidden(self, path: str) -> None:
        self._send(403, b"no", {"Content-Type": "text/plain"})

    def scenario_redirect(self, path: str) -> None:
        parts = path.split("/")
        hops = int(parts[3])
        if hops == 0:
            return self.scenario_ok(path)
        parts[3] = str(hops - 1)
        self._send(302, b"", {"Location": "/".join(parts)})

    scenario_nofollow = scenario_redirect

    def scenario_elsewhere(self, path: str) -> None:
        """/<dir>/elsewhere/<urlsafe base64 of a URL>/...: a 302 to that URL (a hostile origin)."""
        target = path.split("/")[path.split("/").index("elsewhere") + 1]
        self._send(302, b"", {"Location": base64.urlsafe_b64decode(target + "=" * (-len(target) % 4)).decode()})

    def scenario_endless(self, path: str) -> None:
        """A chunked body that never ends (until the client hangs up)."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"x" * 65536
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        except OSError:
            self.close_connection = True

    def scenario_loop(self, path: str) -> None:
        self._send(302, b"", {"Location": path})

    def scenario_slow(self, path: str) -> None:
        time.sleep(self.origin.slow_seconds)
        self.scenario_ok(path)

    def scenario_gate(self, path: str) -> None:
        """Answers only once the test opens the gate (bounded: 10 s)."""
        self.origin.gate.wait(timeout=10)
        self.scenario_ok(path)

    def scenario_reset(self, path: str) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def scenario_short(self, path: str) -> None:
        body = body_for(path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def scenario_chunked(self, path: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = body_for(path)
        for piece in (body[:10], body[10:]):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def scenario_gzip(self, path: str) -> None:
        self._send(200, gzip.compress(body_for(path), mtime=0), {"Content-Type": "text/plain", "Content-Encoding": "gzip"})

    def scenario_md5(self, path: str) -> None:
        """A Content-MD5 that matches the body (…/md5/good/…) or does not (…/md5/bad/…)."""
        body = body_for(path)
        digest = hashlib.md5(body if "/good/" in path else b"something else").digest()
        self._send(200, body, {"Content-Type": "text/plain", "Content-MD5": base64.b64encode(digest).decode()})

    def scenario_meta(self, path: str) -> None:
        self._send(200, body_for(path), {
            "Content-Type": "text/plain", "Last-Modified": LAST_MODIFIED,
            "x-amz-meta-owner": "ops", "x-oss-meta-team": "data",
        })

    def scenario_hugeheaders(self, path: str) -> None:
        self._send(200, body_for(path), {"X-Padding": "x" * 200_000})

    def scenario_badlength(self, path: str) -> None:
        self._send(200, body_for(path), {"Content-Length": "12abc"})

    def scenario_gziplie(self, path: str) -> None:
        self._send(200, body_for(path), {"Content-Type": "text/plain", "Content-Encoding": "gzip"})

    def scenario_gziptruncated(self, path: str) -> None:
        self._send(200, gzip.compress(body_for(path) * 50)[:-20], {"Content-Encoding": "gzip"})

    def scenario_badetag(self, path: str) -> None:
        self._send(200, body_for(path), {"Content-Type": "text/plain", "ETag": '"0123456789abcdef0123456789abcdef"'})

    def scenario_goodetag(self, path: str) -> None:
        body = body_for(path)
        self._send(200, body, {"Content-Type": "text/plain", "ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def scenario_drip(self, path: str) -> None:
        """Headers at once, then one byte every 0.4 s (bounded: at most 20 bytes)."""
        body = body_for(path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for byte in body[:20]:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.4)
        self.close_connection = True

    def scenario_ftpredirect(self, path: str) -> None:
        self._send(302, b"", {"Location": "ftp://files.example.com/x"})

    def scenario_sized(self, path: str) -> None:
        """/<dir>/sized/<bytes>/<name>: a deterministic body of that size, streamed in 1 MiB
        writes (so big bodies never sit in memory), chunked when the name ends in .chunked."""
        size = int(path.split("/")[path.split("/").index("sized") + 1])
        chunked = path.endswith(".chunked")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(size))
        self.end_headers()
        for piece in sized_body(size):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def scenario_shortsized(self, path: str) -> None:
        """/<dir>/shortsized/<bytes>/<name>: declares that many bytes, sends half, stalls for
        BREAK_AFTER seconds (so that a proxy streaming the answer has begun it: a body already known
        broken is a clean 424), hangs up. With a name ending in .md5etag, the whole body's MD5 as
        its ETag (as an S3 origin sends it)."""
        size = int(path.split("/")[path.split("/").index("shortsized") + 1])
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        if path.endswith(".md5etag"):
            self.send_header("ETag", f'"{sized_md5(size)}"')
        self.end_headers()
        for piece in sized_body(size // 2):
            self.wfile.write(piece)
        self.wfile.flush()
        time.sleep(BREAK_AFTER)
        self.close_connection = True

    def scenario_picky(self, path: str) -> None:
        """404 for a query with "bad" in it or the user agent "odd"; the object otherwise."""
        if "bad" in urlsplit(self.path).query or self.headers.get("user-agent") == "odd":
            self._send(404, b"not here", {})
        else:
            self._send(200, body_for(path), {})

    def scenario_echo(self, path: str) -> None:
        """Body = what the origin received (path with query, headers), as JSON."""
        seen = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        self._send(200, json.dumps(seen).encode(), {"Content-Type": "application/json"})


def echo_of(body: bytes) -> dict:
    return json.loads(body)


def elsewhere(url: str) -> str:
    """The path segment that makes the origin redirect to `url` (scenario `elsewhere`)."""
    return "elsewhere/" + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
