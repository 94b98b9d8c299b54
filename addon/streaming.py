"""Stream mode (backorigin_large_objects=stream): misses are answered by streaming the
origin's body through mitmproxy, with no size limit and bounded memory.

mitmproxy cannot stream a body that an addon fetches after the store's 404, so stream
mode decides before the store answers: the `request` hook asks the store (HEAD, with the
proxy's own credentials, off the event loop, with a small cache of keys known to exist)
and, on a miss, re-routes the flow to the origin the way mapremote does. A `Tee` set as
`flow.response.stream` passes each chunk on to the client and into a spool file, checking
the body as it goes; the `response` hook then hands a complete, checked file to the
write-back.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import botocore.exceptions
from mitmproxy import http

from addon.integrity import BodyCheck
from addon.origin import OriginRequest, sigv4_headers
from addon.rules import LOOP_HEADER, RoutingRule
from addon.s3 import ObjectRef

EXISTS_TTL = 60.0  # seconds a "this key exists" answer is trusted
EXISTS_CACHE_SIZE = 10_000


class ExistenceCache:
    """Keys the store recently said it has; misses are never cached (they are about to change)."""

    def __init__(self, ttl: float = EXISTS_TTL, size: int = EXISTS_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        seen = self._seen.get(key)
        return seen is not None and time.monotonic() - seen < self.ttl

    def add(self, key: tuple[str, str, str]) -> None:
        self._seen[key] = time.monotonic()
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


def store_has(client: Any, bucket: str, key: str) -> bool:
    """HEAD the object with the proxy's own credentials (blocking: run it in a thread)."""
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise


def reroute(flow: http.HTTPFlow, request: OriginRequest) -> None:
    """Send the flow to the origin instead of the store, with the origin's headers only."""
    headers = {**dict(request.headers), LOOP_HEADER: "1"}
    flow.request.url = request.url  # sets scheme, host, port, path and the Host header
    host = headers.pop("host", flow.request.host_header)
    if request.auth:
        headers = sigv4_headers("GET", request.url, {"host": host, **headers}, request.auth)
        host = headers.pop("host", host)
    flow.request.headers = http.Headers([(b"host", host.encode())] + [(k.encode(), v.encode()) for k, v in headers.items()])


@dataclass
class Tee:
    """A `flow.response.stream` callable: each chunk goes on to the client unchanged and
    into `path`, and is checked (length, MD5, gzip framing) as it passes."""

    path: Path
    check: BodyCheck
    finished: bool = False
    _out: BinaryIO | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._out = open(self.path, "wb")

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            self.check.update(chunk)
            assert self._out is not None
            self._out.write(chunk)
        else:  # mitmproxy calls once more with b"" at the end of the body
            self.close()
            self.finished = True
        return chunk

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def streamed_headers(response: http.Response, keep: Callable[[str], bool]) -> None:
    """Keep the framing headers and those `keep` accepts; drop every other origin header."""
    framing = {"content-length", "transfer-encoding"}
    for name in list(response.headers.keys()):
        if name.lower() not in framing and not keep(name.lower()):
            del response.headers[name]


@dataclass
class StreamedMiss:
    """A miss that stream mode re-routed to the origin, until its response is complete."""

    endpoint: str
    ref: ObjectRef
    rule: RoutingRule
    request: OriginRequest
    original: http.Request  # the client's request as it was, before re-routing
    tee: Tee | None = None
    origin_headers: tuple[tuple[str, str], ...] = ()
