"""The origin fetch: when a secondary origin takes over; which redirects it follows and what it
sends there; the largest body it takes; nothing kept from one fetch to the next."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import httpx
import pytest
from mitmproxy.test import tutils

from backorigin.limits import PART_SIZE
from backorigin.miss.origin import Failure, OriginClient, OriginResult, is_public, should_switch
from backorigin.rules.targets import build_request
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


class Origin:
    """A scripted transport: `answers` maps a URL to (status, headers, body); every request is kept."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.answers = answers
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        status, headers, body = self.answers.get(str(request.url), (404, {}, b""))
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))  # not read yet, as off the wire

    def client(self) -> OriginClient:
        return OriginClient(transport=httpx.MockTransport(self))


MIRROR = {"RedirectType": "Mirror", "MirrorURL": "https://origin.test/", "MirrorHeaders": {"Set": [{"Key": "x-secret", "Value": "s"}]}}
AUTH = {"AuthType": "S3V4", "Region": "r", "AccessKeyId": "AK", "AccessKeySecret": "SK"}


def asked(redirect: dict = MIRROR, key: str = "k"):
    return build_request(rule_of(redirect), key, tutils.treq(path=f"/b/{key}".encode()))


def moved(location: str) -> tuple[int, dict[str, str], bytes]:
    return 302, {"location": location}, b""


async def fetch(origin: Origin, request, client: OriginClient | None = None, sink: Sink | None = None) -> OriginResult:
    client = client or origin.client()
    try:
        return await client.fetch(request, sink or Sink())
    finally:
        await client.aclose()


@pytest.fixture
async def resolving(monkeypatch):
    """Host names resolved as the test says (no DNS)."""
    names: dict[str, str] = {}

    async def getaddrinfo(host, port, *args, **kwargs):
        address = names.get(host, host)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return names


@pytest.mark.parametrize("target", ["http://10.0.0.5/x", "http://127.0.0.2:9000/x", "http://[::1]/x", "http://169.254.169.254/latest/",
                                    "http://0.0.0.0/x", "http://[fd00::1]/x", "http://[::ffff:127.0.0.1]/x"])
async def test_a_redirect_to_a_private_address_is_refused_and_not_asked(resolving, target):
    origin = Origin({"https://origin.test/k": moved(target)})
    result = await fetch(origin, asked())
    assert result.status is None and result.failure is Failure.REDIRECT and "not a public address" in result.detail
    assert [str(r.url) for r in origin.seen] == ["https://origin.test/k"]


async def test_a_host_name_is_checked_by_its_addresses_and_connected_to_at_the_address_checked(resolving):
    resolving.update({"internal.test": "127.0.0.1", "cdn.test": "93.184.216.34"})
    refused = Origin({"https://origin.test/k": moved("http://internal.test/x")})
    assert (await fetch(refused, asked())).failure is Failure.REDIRECT
    origin = Origin({"https://origin.test/k": moved("https://cdn.test:8443/x"), "https://93.184.216.34:8443/x": (200, {}, b"body")})
    result = await fetch(origin, asked())
    assert result.ok and result.final_url == "https://cdn.test:8443/x"
    there = origin.seen[1]
    assert there.headers["host"] == "cdn.test:8443" and there.extensions["sni_hostname"] == "cdn.test"
    assert "x-secret" not in there.headers and there.headers["x-backorigin-fetch"] == "1"  # the rule's headers stay home


async def test_the_rules_own_hosts_get_its_headers_and_credentials_but_never_over_http():
    rule = {**MIRROR, "MirrorAuth": AUTH}
    origin = Origin({"https://origin.test/k": moved("https://origin.test:444/k2"), "https://origin.test:444/k2": moved("http://origin.test/k3"),
                     "http://origin.test/k3": (200, {}, b"body")})
    result = await fetch(origin, asked(rule))
    assert result.ok
    first, same_host, downgraded = origin.seen
    assert first.headers["x-secret"] == "s" and "AWS4-HMAC-SHA256" in first.headers["authorization"]
    assert same_host.headers["x-secret"] == "s" and "authorization" in same_host.headers  # another port: still the rule's host
    assert "x-secret" not in downgraded.headers and "authorization" not in downgraded.headers  # https -> http


async def test_hosts_allowed_by_option_are_followed_without_the_rules_headers(resolving):
    origin = Origin({"https://origin.test/k": moved("http://10.0.0.5/x"), "http://10.0.0.5/x": (200, {}, b"body")})
    client = origin.client()
    client.allowed_hosts = frozenset({"10.0.0.5"})
    result = await fetch(origin, asked(), client)
    assert result.ok and "x-secret" not in origin.seen[1].headers


async def test_a_body_over_the_largest_size_ends_the_fetch():
    client_max = 1000
    declared = Origin({"https://origin.test/k": (200, {"content-length": "5000"}, b"x" * 5000)})
    client = declared.client()
    client.max_size = client_max
    assert (await fetch(declared, asked(), client)).failure is Failure.TOO_LARGE
    undeclared = Origin({})

    def chunked(request: httpx.Request) -> httpx.Response:
        undeclared.seen.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(b"x" * 5000))  # no length: a stream that goes on

    client = OriginClient(transport=httpx.MockTransport(chunked))
    client.max_size = client_max
    result = await fetch(undeclared, asked(), client)
    assert result.failure is Failure.TOO_LARGE and "backorigin_max_object_size" in result.detail


async def test_nothing_is_kept_from_one_fetch_to_the_next():
    origin = Origin({"https://origin.test/k": (200, {"set-cookie": "session=abc"}, b"body")})
    client = origin.client()
    try:
        await client.fetch(asked(), Sink())
        await client.fetch(asked(), Sink())
    finally:
        await client.aclose()
    assert "cookie" not in origin.seen[1].headers


def s3_etag(parts: list[bytes]) -> str:
    return '"' + hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f'-{len(parts)}"'


async def test_an_s3_origins_multipart_etag_is_kept_by_uploading_its_parts_as_it_did(monkeypatch):
    monkeypatch.setattr("backorigin.miss.integrity.MIN_PART", 1)  # small parts, to keep the body small
    body, etag = b"abcdefgh", s3_etag([b"abc", b"def", b"gh"])
    origin = Origin({"https://origin.test/k": (200, {"etag": etag, "content-length": "8"}, body),
                     "https://origin.test/k?partNumber=1": (206, {"content-length": "3", "x-amz-mp-parts-count": "3"}, b"")})
    sink = Sink()
    result = await fetch(origin, asked({**MIRROR, "MirrorAuth": AUTH}), sink=sink)
    assert result.ok and (result.etag, result.part_size) == (etag, 3)
    assert sink.etag == etag and sink.body == body  # announced before the body
    head = origin.seen[1]
    assert head.method == "HEAD" and head.url.params["partNumber"] == "1"
    assert "AWS4-HMAC-SHA256" in head.headers["authorization"] and head.headers["x-secret"] == "s"  # asked as the GET was


@pytest.mark.parametrize("head", [(200, {"content-length": "8"}, b""), (400, {}, b""), (403, {}, b"")])
async def test_an_origin_that_does_not_say_its_parts_gets_the_default_layout_and_no_announced_etag(head):
    etag = s3_etag([b"abc", b"def", b"gh"])
    origin = Origin({"https://origin.test/k": (200, {"etag": etag, "content-length": "8"}, b"abcdefgh"),
                     "https://origin.test/k?partNumber=1": head})
    sink = Sink()
    result = await fetch(origin, asked(), sink=sink)
    assert result.ok and result.part_size == PART_SIZE and sink.etag is None
    assert result.etag == f'"{hashlib.md5(b"abcdefgh").hexdigest()}"'  # what the store will say, announced once whole


async def test_a_plain_md5_etag_is_announced_and_kept_with_one_put():
    body = b"x" * 100
    md5 = f'"{hashlib.md5(body).hexdigest()}"'
    origin = Origin({"https://origin.test/k": (200, {"etag": md5, "content-length": "100"}, body)})
    sink = Sink()
    result = await fetch(origin, asked(), sink=sink)
    assert sink.etag == md5 == result.etag and result.part_size > 5 * 1024**3
    assert len(origin.seen) == 1  # no parts to ask about


@pytest.mark.parametrize("address, public", [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("::1", False), ("fe80::1%eth0", False), ("fd00::1", False), ("::ffff:10.0.0.1", False), ("224.0.0.1", False),
])
def test_which_addresses_are_public(address, public):
    assert is_public(address) is public
