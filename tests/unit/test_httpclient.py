"""The URLs and headers the proxy's HTTP client sends: exactly as given, or refused."""

from __future__ import annotations

import pytest

from backorigin.httpclient import NotSendable, absolute_url, decoded_headers, exact_url, joined, wire_headers


@pytest.mark.parametrize("target", ["/b//a/./c/../d%2Fe%20f%7e?x=1&y=%7E&z", "/", "/b/k?", "/b/%ZZ"])
def test_a_target_is_sent_as_it_is_or_refused(target):
    try:
        url = exact_url("http", "store.test", 9000, target)
    except NotSendable:
        assert target == "/b/k?"  # yarl would drop the empty query's "?"
    else:
        assert url.raw_path_qs == target and url.raw_host == "store.test" and url.port == 9000


@pytest.mark.parametrize("target", ["/b/caf\udce9", "/b/café", "/b/a b", "/b/k#f", "b/k", "/b/\x7f"])
def test_a_target_aiohttp_would_alter_is_refused(target):
    with pytest.raises(NotSendable):
        exact_url("http", "store.test", 9000, target)


@pytest.mark.parametrize("url, sent", [
    ("https://cdn.test:8443/a/./b?x=%7e", "https://cdn.test:8443/a/./b?x=%7e"),
    ("http://h/a b?c d#fragment", "http://h/a%20b?c%20d"),  # what a request line cannot carry, percent-encoded
    ("http://user:secret@h:81/x", "http://h:81/x"),  # no credentials from a Location
    ("http://bücher.test/é", "http://xn--bcher-kva.test/%C3%A9"),
    ("http://[::1]:9000/x", "http://[::1]:9000/x"),
])
def test_an_absolute_url_keeps_its_path(url, sent):
    assert str(absolute_url(url)) == sent


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///x", "http://h:99999/x", "/relative"])
def test_what_is_not_an_http_url_is_refused(url):
    with pytest.raises(NotSendable):
        absolute_url(url)


def test_headers_go_as_text_aiohttp_writes_back_unchanged():
    assert wire_headers([(b"X-A", b"caf\xc3\xa9"), (b"x-b", b"1"), (b"x-b", b"2")]) == [("X-A", "café"), ("x-b", "1"), ("x-b", "2")]
    for refused in ([(b"X-A", b"caf\xe9")], [(b"x-b", b"1"), (b"X-B", b"2")]):
        with pytest.raises(NotSendable):
            wire_headers(refused)


def test_answer_headers_are_decoded_as_httpx_did():
    assert decoded_headers([(b"A", b"caf\xc3\xa9")]) == (("A", "café"),)
    assert decoded_headers([(b"A", b"caf\xe9"), (b"B", b"\xc3\xa9")]) == (("A", "café"), ("B", "Ã©"))  # one encoding for all
    assert joined([("ETag", '"a"'), ("etag", '"b"'), ("X", "1")]) == {"etag": '"a", "b"', "x": "1"}
