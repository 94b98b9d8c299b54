"""How a miss's answer reaches its client, as a child addon of BackOrigin.

mitmproxy 11 streams a body only when it comes from a server connection; a body set in a hook
goes out as one blob. So a miss decided in the request hook is either answered right there, from
memory, when it is small (limits.IN_HOOK_ANSWER_LIMIT), or re-routed to the loopback miss server
(miss.server), whose answer mitmproxy streams with backpressure. A miss that only the response
hook sees (a late miss) is answered from memory up to the whole-answer limit, and otherwise gets
503 SlowDown, which S3 clients retry (the retry is decided in the request hook and streams).

An answer that breaks once its headers are out breaks the client's side too: mitmproxy resets the
HTTP/2 stream, and an HTTP/1 connection is reset rather than closed (`reset_on_close`).
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass

from mitmproxy import ctx, http

from backorigin.decision import Outcome, Recorder, add_debug_header
from backorigin.miss.answer import answers_whole, collect
from backorigin.miss.mirror import Mirror, Miss
from backorigin.miss.server import MissServer
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.storeclient import StoreAnswer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rerouted:
    """A flow sent to the miss server, and the request as the client sent it."""

    miss: Miss
    client_request: http.Request
    ticket: str  # the miss server's path for it


class MissDelivery:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.server = MissServer()
        self.rerouted: dict[str, Rerouted] = {}  # flow id -> its miss, while the miss server answers it

    def owns(self, flow: http.HTTPFlow) -> bool:
        """A flow re-routed to the miss server: its hooks are this addon's."""
        return flow.id in self.rerouted

    async def deliver(self, flow: http.HTTPFlow, mirror: Mirror, miss: Miss, store_404: StoreAnswer) -> None:
        """From the request hook: a small answer that waits for the whole body right here, any other
        through the miss server."""
        if not store_404.body:
            store_404 = _answer_of(replies.no_such_key(miss.ref))
        if await mirror.fits_in_memory(miss) and answers_whole(miss.fill, flow.request.method, flow.request.headers.get,
                                                               mirror.origin.timeouts.whole_limit):
            await self._answer_here(flow, mirror, miss, store_404, mirror.in_hook_limit)
            return
        await self.server.ensure_started()
        client_request = flow.request.copy()
        path = self.server.issue(
            lambda: mirror.reply(miss, client_request.method, client_request.headers.get, store_404)
        )
        self.rerouted[flow.id] = Rerouted(miss, client_request, path)
        flow.request.scheme, flow.request.host, flow.request.port, flow.request.path = "http", "127.0.0.1", self.server.port, path
        flow.server_conn.via = None  # in upstream mode too, the miss server is reached directly

    async def refuse(self, flow: http.HTTPFlow, reply: replies.Reply) -> None:
        """Answer a request whose body is still on its way (from requestheaders: mitmproxy takes no
        answer there) with `reply`, without the store: the miss server reads the body and answers."""
        await self.server.ensure_started()
        path = self.server.issue(lambda: _ready(reply))
        flow.request.scheme, flow.request.host, flow.request.port, flow.request.path = "http", "127.0.0.1", self.server.port, path
        flow.server_conn.via = None

    async def deliver_late(self, flow: http.HTTPFlow, mirror: Mirror, miss: Miss | None, store_404: StoreAnswer,
                           ref: ObjectRef) -> None:
        """From the response hook: the whole answer from memory (503 SlowDown when it is larger
        than the whole-answer limit, or when there is no miss to answer: another proxy's fill
        landed meanwhile; the client's retry is decided in the request hook)."""
        if miss is None:
            flow.response = replies.to_response(flow.request, replies.slow_down(ref))
            return
        await self._answer_here(flow, mirror, miss, store_404, mirror.origin.timeouts.whole_limit)

    async def _answer_here(self, flow: http.HTTPFlow, mirror: Mirror, miss: Miss, store_404: StoreAnswer,
                           limit: int) -> None:
        reply = await mirror.reply(miss, flow.request.method, flow.request.headers.get, store_404)
        if reply.stream is not None:
            reply = await collect(reply, limit) or replies.slow_down(miss.ref)
        flow.response = replies.to_response(flow.request, reply)
        self._served(flow, miss)

    def _served(self, flow: http.HTTPFlow, miss: Miss, header: bool = True) -> None:
        if flow.request.method == "GET" and flow.response is not None and flow.response.status_code < 300:
            self.recorder.stats.served["origin"] += 1
        self.recorder.record(flow, miss.decision(), acted=True, header=header)

    # hooks of re-routed flows ---------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        rerouted = self.rerouted.get(flow.id)
        if rerouted is not None and flow.response is not None:
            flow.response.stream = True  # the miss server's answer, streamed with backpressure
            if self.recorder.debug_header:  # now or never: a streamed answer's headers go out next
                add_debug_header(flow.response, rerouted.miss.decision())

    def response(self, flow: http.HTTPFlow) -> None:
        if rerouted := self.rerouted.pop(flow.id, None):
            flow.request = rerouted.client_request  # recordings and the UI show what the client asked
            self._served(flow, rerouted.miss, header=False)  # responseheaders added it

    def error(self, flow: http.HTTPFlow) -> None:
        if rerouted := self.rerouted.pop(flow.id, None):
            if flow.response is not None and rerouted.client_request.http_version.startswith("HTTP/1"):
                reset_on_close(flow)  # its headers went out: the body broke off (mitmproxy closes the connection next)
            self.server.withdraw(rerouted.ticket)  # unused when the client left before mitmproxy came to it
            flow.request = rerouted.client_request
            self.recorder.record(flow, rerouted.miss.decision(Outcome.BROKEN, str(flow.error)), acted=True)

    async def aclose(self) -> None:
        await self.server.stop()


def reset_on_close(flow: http.HTTPFlow) -> None:
    """Make mitmproxy's close of the flow's client connection a reset (SO_LINGER 0). A close after
    part of a body passes for the end of a whole one with clients that read to the close and do
    not check Content-Length (CPython's http.client reading in pieces: shutil.copyfileobj over
    urlopen); a reset fails their read. mitmproxy 11 offers no reset of its own: its proxyserver
    holds the client's transport."""
    try:
        handler = ctx.master.addons.get("proxyserver").connections[flow.client_conn.id]
        sock = handler.transports[flow.client_conn].writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (AttributeError, KeyError, OSError) as e:  # no live connection (a test's flow), or it is gone already
        logger.debug("cannot reset the client connection of %s: %r", flow.id, e)


async def _ready(reply: replies.Reply) -> replies.Reply:
    return reply


def _answer_of(reply: replies.Reply) -> StoreAnswer:
    return StoreAnswer(reply.status, tuple(reply.headers), reply.body)
