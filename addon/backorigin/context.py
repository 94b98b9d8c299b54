"""What BackOrigin and its child addons share: the rules in force, the options every flow reads
(copied once in configure: an option read copies its value every time), and the one reading of
each request (s3.reading), made once per request and used by every part of the proxy."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import http

from backorigin.rules.model import RuleBook
from backorigin.rules.rulesfile import RulesFile
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.reading import Names, Reading, SentRequest, SetAside, as_recorded, read


@dataclass
class Context:
    rules_file: RulesFile
    names: Names = field(default_factory=Names)  # the stores and host names (backorigin.stores sets them)
    dry_run: bool = False
    # told of each live request set aside (backorigin.stores logs and counts it)
    set_aside: Callable[[SetAside], None] = lambda aside: None
    _readings: weakref.WeakKeyDictionary[http.Request, Reading | SetAside] = field(default_factory=weakref.WeakKeyDictionary)

    @property
    def rulebook(self) -> RuleBook:
        return self.rules_file.rulebook

    def acts(self, flow: http.HTTPFlow) -> bool:
        """Live flows outside a dry run act; replayed flows and dry runs only decide."""
        return flow.live and not self.dry_run

    def read(self, flow: http.HTTPFlow) -> Reading | None:
        """The store's reading of the flow's request, None when it is set aside. A flow that does
        not act (a recording, a dry run) is read as sent to a named store, by a known name: a
        recorded flow's server is the store it was recorded against."""
        found = self._readings.get(flow.request)
        if found is None:
            listen = flow.client_conn.sockname[0] if flow.client_conn.sockname else ""
            sent = sent_of(flow.request, listen)
            acting = self.acts(flow)
            found = read(sent, self.names if acting else as_recorded(sent, self.names))
            self._readings[flow.request] = found
            if isinstance(found, SetAside) and acting:
                self.set_aside(found)
        return found if isinstance(found, Reading) else None

    def object(self, flow: http.HTTPFlow) -> ObjectRef | None:
        """The object the store reads from the flow's request, or None (not an object, or set aside)."""
        reading = self.read(flow)
        return reading.ref if reading is not None else None

    def bucket(self, flow: http.HTTPFlow) -> str | None:
        """The bucket a bucket call (DeleteObjects, a listing) names as the store reads it, or None."""
        reading = self.read(flow)
        return reading.bucket if reading is not None and reading.bucket and not reading.key else None

    def endpoint(self, request: http.Request) -> str | None:
        """The store the proxy writes to and asks on the request's behalf (its address for the
        proxy's own requests), None for a request set aside. Read when its flow was."""
        found = self._readings.get(request)
        if found is None:
            found = self._readings[request] = read(sent_of(request, ""), self.names)
        return found.endpoint if isinstance(found, Reading) else None


def sent_of(request: http.Request, listen_address: str) -> SentRequest:
    """The request as mitmproxy sends it to the store, after its own rewriting (reverse mode's Host
    unless keep_host_header; regular mode's absolute-form made origin-form): an authority that
    goes out (HTTP/2's `:authority`, an absolute-form target's) and every Host header."""
    hosts = [request.authority] if request.authority else []
    hosts += request.headers.get_all("host")
    return SentRequest(request.scheme, request.host, request.port, tuple(hosts), request.path, listen_address)
