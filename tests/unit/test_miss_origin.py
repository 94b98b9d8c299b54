"""The origin fetch: when a secondary origin takes over; which redirects it follows and what it
sends there; the largest body it takes; nothing kept from one fetch to the next; the exact path
and, at a pinned address, a connection of its own per TLS server name. Against a scripted origin
on loopback sockets (tests/loopback.py), names resolved as each test says."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest
from mitmproxy.test import tutils

from backorigin.limits import PART_SIZE
from backorigin.miss import addresses as addresses_module
from backorigin.miss.addresses import is_public
from backorigin.miss.folders import folder_redirect
from backorigin.miss.origin import Failure, OriginClient, OriginResult, should_switch
from backorigin.rules.targets import build_request
from tests.loopback import Loopback, server_context
from tests.modes_support import TestCA as CA
from tests.modes_support import make_test_ca
from tests.support import rule_of


@pytest.mark.parametrize(
    "status, all_errors, switch",
    [(None, False, True), (500, False, True), (503, False, True), (403, False, False), (404, False, False),
     (200, False, False), (None, True, True), (403, True, True), (500, True, True), (404, True, False),
     (302, True, False), (206, True, False)],
)
def test_should_switch_to_the_secondary(status, all_errors, switch):
    assert should_switch(OriginResult("u", status), all_errors) is switch


class Sink:
    def __init__(self) -> None:
        self.body = b""
        self.started = False
        self.etag: str | None = None

    def begin(self, status: int, headers: tuple[tuple[str, str], ...], url: str, etag: str | None) -> None:
        self.started, self.etag = True, etag

    def write(self, chunk: bytes) -> None:
        self.body += chunk


class Origin(Loopback):
    """The scripted origin: https://origin.test:PORT/ (`url`), the same host on a second TLS port
    (`other_port`) and on a plain port (`plain_port`); every request is kept (`seen`)."""

    ca: CA
    other_port = plain_port = 0

    def url(self, target: str, port: int | None = None, scheme: str = "https") -> str:
        return f"{scheme}://origin.test:{port or self.port}{target}"

    def mirror(self, **more) -> dict:
        return {"RedirectType": "Mirror", "MirrorURL": self.url("/"), "MirrorHeaders": {"Set": [{"Key": "x-secret", "Value": "s"}]},
                **more}

    def client(self) -> OriginClient:
        return OriginClient(verify=str(self.ca.ca_cert))


AUTH = {"AuthType": "S3V4", "Region": "r", "AccessKeyId": "AK", "AccessKeySecret": "SK"}
NAMES = ("localhost", "origin.test", "cdn.test", "other.test")  # the test certificate's (not stranger.test)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CA:
    return make_test_ca(tmp_path_factory.mktemp("origin-ca"), NAMES)


@pytest.fixture
async def resolving(monkeypatch):
    """Host names resolved as the test says (no DNS); a list of addresses is answered one per
    look-up, the last one from then on."""
    names: dict[str, str | list[str]] = {"origin.test": "127.0.0.1"}

    async def getaddrinfo(host, port, *args, **kwargs):
        address = names.get(host, host)
        if isinstance(address, list):
            address = address.pop(0) if len(address) > 1 else address[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return names


@pytest.fixture
async def origin(ca, resolving):
    scripted = Origin()
    scripted.ca = ca
    await scripted.listen(tls=server_context(str(ca.server_cert), str(ca.server_key)))
    scripted.other_port = await scripted.listen(tls=server_context(str(ca.server_cert), str(ca.server_key)))
    scripted.plain_port = await scripted.listen()
    yield scripted
    await scripted.close()


def asked(redirect: dict, key: str = "k"):
    return build_request(rule_of(redirect), key, tutils.treq(path=f"/b/{key}".encode()))


def moved(location: str) -> tuple[int, dict[str, str], bytes]:
    return 302, {"location": location}, b""


async def fetch(origin: Origin, request, client: OriginClient | None = None, sink: Sink | None = None) -> OriginResult:
    client = client or origin.client()
    try:
        return await client.fetch(request, sink or Sink())
    finally:
        await client.aclose()


@pytest.mark.parametrize("target", ["http://10.0.0.5/x", "http://127.0.0.2:9000/x", "http://[::1]/x", "http://169.254.169.254/latest/",
                                    "http://0.0.0.0/x", "http://[fd00::1]/x", "http://[::ffff:127.0.0.1]/x"])
async def test_a_redirect_to_a_private_address_is_refused_and_not_asked(origin, target):
    origin.answers[origin.url("/k")] = moved(target)
    result = await fetch(origin, asked(origin.mirror()))
    assert result.status is None and result.failure is Failure.REDIRECT and "not a public address" in result.detail
    assert [r.url for r in origin.seen] == [origin.url("/k")]


async def test_a_head_is_asked_as_the_get_would_be_and_reads_no_body(origin):
    """`backorigin verify`'s HEAD: the rule's headers, the redirect to the rule's own host on its
    other port (without them: another port is another server), then MirrorURLSlave when the
    primary's answer switches."""
    origin.answers[origin.url("/k")] = moved(origin.url("/moved/k", origin.other_port))
    origin.answers[origin.url("/moved/k", origin.other_port)] = (500, {}, b"")
    origin.answers[origin.url("/second/k")] = (200, {"etag": '"abc"', "content-length": "5"}, b"")
    client = origin.client()
    try:
        result = await client.head(asked(origin.mirror(MirrorURLSlave=origin.url("/second/"))))
    finally:
        await client.aclose()
    assert [(r.method, r.url) for r in origin.seen] == [
        ("HEAD", origin.url("/k")), ("HEAD", origin.url("/moved/k", origin.other_port)), ("HEAD", origin.url("/second/k"))]
    assert [r.header("x-secret") for r in origin.seen] == ["s", None, "s"]
    assert result.status == 200 and result.header("etag") == '"abc"' and result.header("content-length") == "5"


async def test_a_head_redirected_to_a_private_address_is_refused_and_not_asked(origin):
    origin.answers[origin.url("/k")] = moved("http://169.254.169.254/latest/")
    client = origin.client()
    try:
        result = await client.head(asked(origin.mirror()))
    finally:
        await client.aclose()
    assert result.failure is Failure.REDIRECT and [r.url for r in origin.seen] == [origin.url("/k")]


@pytest.fixture
def public_loopback(monkeypatch):
    """127.0.0.3 counts as a public address (the stand-in for a CDN's); no other loopback one does."""
    monkeypatch.setattr(addresses_module, "is_public", lambda address: address == "127.0.0.3" or is_public(address))


async def test_a_host_name_is_checked_by_its_addresses_and_connected_to_at_the_address_checked(origin, resolving, public_loopback):
    cdn_port = await origin.listen("127.0.0.3", server_context(str(origin.ca.server_cert), str(origin.ca.server_key)))
    # cdn.test resolves to a public address once, then (DNS rebinding) to a private one
    resolving.update({"internal.test": "127.0.0.1", "cdn.test": ["127.0.0.3", "127.0.0.1"]})
    origin.answers[origin.url("/k")] = moved("http://internal.test/x")
    assert (await fetch(origin, asked(origin.mirror()))).failure is Failure.REDIRECT
    origin.seen.clear()
    origin.answers[origin.url("/k")] = moved(f"https://cdn.test:{cdn_port}/x")
    origin.answers[f"https://cdn.test:{cdn_port}/x"] = (200, {}, b"body")
    result = await fetch(origin, asked(origin.mirror()))
    assert result.ok and result.final_url == f"https://cdn.test:{cdn_port}/x"
    there = origin.seen[1]
    assert there.local == "127.0.0.3" and there.header("host") == f"cdn.test:{cdn_port}" and there.sni == "cdn.test"
    # the rule's headers stay home; the loop marker goes everywhere
    assert not there.has("x-secret") and there.header("x-backorigin-fetch") == origin.seen[0].header("x-backorigin-fetch") != ""


async def test_a_pinned_request_gets_a_connection_of_its_own_per_tls_server_name(origin, resolving, public_loopback):
    """httpcore pooled connections by address alone: a kept-alive TLS connection made (and its
    certificate checked) for one name carried a request for another name at the same address."""
    cdn_port = await origin.listen("127.0.0.3", server_context(str(origin.ca.server_cert), str(origin.ca.server_key)))
    resolving.update({"cdn.test": "127.0.0.3", "other.test": "127.0.0.3", "stranger.test": "127.0.0.3"})
    client = origin.client()
    try:
        for name in ("cdn.test", "other.test", "cdn.test", "stranger.test"):
            origin.answers[origin.url(f"/{name}")] = moved(f"https://{name}:{cdn_port}/x")
            origin.answers[f"https://{name}:{cdn_port}/x"] = (200, {}, name.encode())
            sink = Sink()
            result = await client.fetch(asked(origin.mirror(), name), sink)
            if name == "stranger.test":  # not a name of the certificate: refused, not sent on another name's connection
                assert result.failure is Failure.NETWORK and "certificate" in result.detail.lower(), result.detail
            else:
                assert result.ok and sink.body == name.encode()
    finally:
        await client.aclose()
    at_cdn = [(r.sni, r.header("host"), r.connection) for r in origin.seen if r.local == "127.0.0.3"]
    assert [(sni, host) for sni, host, _ in at_cdn] == [(n, f"{n}:{cdn_port}") for n in ("cdn.test", "other.test", "cdn.test")]
    first, other, again = (connection for _, _, connection in at_cdn)
    assert other != first and again == first  # one connection per name, each kept alive


async def test_the_path_goes_to_the_origin_as_it_is_dot_segments_included(origin):
    """httpx removed "." and ".." segments even from a raw path: another object was fetched."""
    origin.answers[origin.url("/dir/./k")] = (200, {}, b"dotted")
    origin.answers[origin.url("/dir/k")] = (200, {}, b"another object")
    sink = Sink()
    result = await fetch(origin, asked({**origin.mirror(), "MirrorURL": origin.url("/dir/./")}), sink=sink)
    assert result.ok and sink.body == b"dotted" and [r.target for r in origin.seen] == ["/dir/./k"]
    origin.seen.clear()
    origin.answers[origin.url("/k")] = moved(origin.url("/a/./c/../d%2Fe%7e?x=%7E&y"))
    origin.answers[origin.url("/a/./c/../d%2Fe%7e?x=%7E&y")] = (200, {}, b"redirected")
    sink = Sink()
    assert (await fetch(origin, asked(origin.mirror()), sink=sink)).ok and sink.body == b"redirected"
    assert origin.seen[1].head.startswith(b"GET /a/./c/../d%2Fe%7e?x=%7E&y HTTP/1.1\r\n")


async def test_the_rules_own_origin_gets_its_headers_and_credentials_but_never_another_port_or_http(origin):
    on_other_port, downgraded_url = origin.url("/k2", origin.other_port), origin.url("/k3", origin.plain_port, "http")
    origin.answers.update({origin.url("/k"): moved(on_other_port), on_other_port: moved(downgraded_url),
                           downgraded_url: (200, {}, b"body")})
    result = await fetch(origin, asked(origin.mirror(MirrorAuth=AUTH)))
    assert result.ok
    first, same_host, downgraded = origin.seen
    assert first.header("x-secret") == "s" and "AWS4-HMAC-SHA256" in (first.header("authorization") or "")
    assert not same_host.has("x-secret") and not same_host.has("authorization")  # another port: another server
    assert not downgraded.has("x-secret") and not downgraded.has("authorization")  # https -> http


async def test_hosts_allowed_by_option_are_followed_without_the_rules_headers(origin):
    allowed = f"http://127.0.0.1:{origin.plain_port}/x"
    origin.answers.update({origin.url("/k"): moved(allowed), allowed: (200, {}, b"body")})
    client = origin.client()
    client.allowed_hosts = frozenset({"127.0.0.1"})
    result = await fetch(origin, asked(origin.mirror()), client)
    assert result.ok and not origin.seen[1].has("x-secret")


async def test_a_body_over_the_largest_size_ends_the_fetch(origin):
    client_max = 1000
    origin.answers[origin.url("/k")] = (200, {"content-length": "5000"}, b"x" * 5000)
    client = origin.client()
    client.max_size = client_max
    assert (await fetch(origin, asked(origin.mirror()), client)).failure is Failure.TOO_LARGE
    origin.answers[origin.url("/k")] = (200, {"transfer-encoding": "chunked"}, b"x" * 5000)  # no length: a stream that goes on
    client = origin.client()
    client.max_size = client_max
    result = await fetch(origin, asked(origin.mirror()), client)
    assert result.failure is Failure.TOO_LARGE and "backorigin_max_object_size" in result.detail


async def test_an_origin_that_hangs_up_before_answering_is_asked_once(origin):
    """aiohttp on its own sends a GET again when the connection breaks before the answer (the
    circuit breaker counts one failure per fetch, and the origin would get two requests)."""
    async def hang_up(seen, writer) -> None:
        pass  # the connection is closed without an answer

    origin.answers[origin.url("/k")] = hang_up
    result = await fetch(origin, asked(origin.mirror()))
    assert result.failure is Failure.NETWORK and "ServerDisconnectedError" in result.detail
    assert len(origin.seen) == 1


async def test_a_kept_alive_connection_the_origin_closed_meanwhile_is_not_a_failure(origin):
    """The origin closes each connection shortly after its answer (as an idle timeout would): the
    next fetch, already sent on that pooled connection, is sent again on a new one."""
    async def answer_and_hang_up(seen, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        await writer.drain()
        await asyncio.sleep(0.05)  # the close comes after the client took the connection again

    origin.answers[origin.url("/k")] = answer_and_hang_up
    client = origin.client()
    try:
        results = [await client.fetch(asked(origin.mirror()), Sink()) for _ in range(3)]
    finally:
        await client.aclose()
    assert [r.failure for r in results] == [None] * 3
    assert len(origin.seen) == 3 and origin.connections == 3


async def test_nothing_is_kept_from_one_fetch_to_the_next(origin):
    origin.answers[origin.url("/k")] = (200, {"set-cookie": "session=abc"}, b"body")
    client = origin.client()
    try:
        await client.fetch(asked(origin.mirror()), Sink())
        await client.fetch(asked(origin.mirror()), Sink())
    finally:
        await client.aclose()
    assert not origin.seen[1].has("cookie")


async def test_only_what_the_fetch_says_goes_on_the_wire(origin):
    """No User-Agent, Accept or Accept-Encoding of the client library's; a gzip body is not inflated."""
    import gzip

    origin.answers[origin.url("/k")] = (200, {"content-encoding": "gzip"}, gzip.compress(b"text", mtime=0))
    sink = Sink()
    result = await fetch(origin, asked(origin.mirror()), sink=sink)
    assert result.ok and sink.body == gzip.compress(b"text", mtime=0)
    names = [name.lower() for name, _ in origin.seen[0].headers]
    assert names == ["host", "x-secret", "x-backorigin-fetch"], names


def s3_etag(parts: list[bytes]) -> str:
    return '"' + hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f'-{len(parts)}"'


async def test_an_s3_origins_multipart_etag_is_kept_by_uploading_its_parts_as_it_did(origin, monkeypatch):
    monkeypatch.setattr("backorigin.miss.integrity.MIN_PART", 1)  # small parts, to keep the body small
    body, etag = b"abcdefgh", s3_etag([b"abc", b"def", b"gh"])
    origin.answers.update({origin.url("/k"): (200, {"etag": etag, "content-length": "8"}, body),
                           origin.url("/k?partNumber=1"): (206, {"content-length": "3", "x-amz-mp-parts-count": "3"}, b"")})
    sink = Sink()
    result = await fetch(origin, asked(origin.mirror(MirrorAuth=AUTH)), sink=sink)
    assert result.ok and (result.etag, result.part_size) == (etag, 3)
    assert sink.etag == etag and sink.body == body  # announced before the body
    head = origin.seen[1]
    assert head.method == "HEAD" and head.params["partNumber"] == ["1"]
    assert "AWS4-HMAC-SHA256" in (head.header("authorization") or "") and head.header("x-secret") == "s"  # asked as the GET was


@pytest.mark.parametrize("head", [(200, {"content-length": "8"}, b""), (400, {}, b""), (403, {}, b"")])
async def test_an_origin_that_does_not_say_its_parts_gets_the_default_layout_and_no_announced_etag(origin, head):
    etag = s3_etag([b"abc", b"def", b"gh"])
    origin.answers.update({origin.url("/k"): (200, {"etag": etag, "content-length": "8"}, b"abcdefgh"),
                           origin.url("/k?partNumber=1"): head})
    sink = Sink()
    result = await fetch(origin, asked(origin.mirror()), sink=sink)
    assert result.ok and result.part_size == PART_SIZE and sink.etag is None
    assert result.etag == f'"{hashlib.md5(b"abcdefgh").hexdigest()}"'  # what the store will say, announced once whole


async def test_a_plain_md5_etag_is_announced_and_kept_with_one_put(origin):
    body = b"x" * 100
    md5 = f'"{hashlib.md5(body).hexdigest()}"'
    origin.answers[origin.url("/k")] = (200, {"etag": md5, "content-length": "100"}, body)
    sink = Sink()
    result = await fetch(origin, asked(origin.mirror()), sink=sink)
    assert sink.etag == md5 == result.etag and result.part_size > 5 * 1024**3
    assert len(origin.seen) == 1  # no parts to ask about


@pytest.mark.parametrize("address, public", [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("::1", False), ("fe80::1%eth0", False), ("fd00::1", False), ("::ffff:10.0.0.1", False), ("224.0.0.1", False),
])
def test_which_addresses_are_public(address, public):
    assert is_public(address) is public


@pytest.mark.parametrize(("url", "target", "folder"), [
    ("http://o:1/data/dir", "http://o:1/data/dir/", True),
    ("http://o:1/data/dir", "http://elsewhere:2/data/dir/", True),  # the path says it, on any host
    ("http://o:1/data/dir?x=1", "http://o:1/data/dir/?x=1", True),
    ("http://o:1/data/dir?x=1", "http://o:1/data/dir/", False),
    ("http://o:1/data/dir", "http://o:1/data/dir/index.html", False),
    ("http://o:1/data/dir", "http://o:1/data/other/", False),
    ("http://o:1/data/dir/", "http://o:1/data/dir//", False),
])
def test_a_redirect_to_the_same_path_plus_a_slash_says_folder(url, target, folder):
    assert bool(folder_redirect(url, 301, target)) is folder
