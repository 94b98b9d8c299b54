"""The one reading of a request (s3.reading), alone: plain values in, the store's reading or why
the proxy steps aside. What SeaweedFS itself reads is held against it by tests/e2e/test_reading.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backorigin.rules.targets import origin_url
from backorigin.s3.reading import Aside, Names, Reading, SentRequest, SetAside, Store, plain_key, read, split_target

STORE = Store.named("http://store.test:8333")
NAMES = Names((STORE,), frozenset({"store.test", "s3.test", "lb.example"}), ("s3.test",))


def sent(host: str | tuple[str, ...] = "store.test:8333", target: str = "/b/k", connect: str = "store.test",
         port: int = 8333, listen: str = "") -> SentRequest:
    return SentRequest("http", connect, port, (host,) if isinstance(host, str) else host, target, listen)


def outcome(found: Reading | SetAside) -> tuple[str, str] | Aside:
    return (found.bucket, found.key) if isinstance(found, Reading) else found.reason


@pytest.mark.parametrize("host, target, expected", [
    ("store.test:8333", "/b/k", ("b", "k")),
    ("STORE.test.", "/b/k", ("b", "k")),  # case and one trailing dot: DNS's spelling of a path-style name
    ("lb.example", "/b/a%20b%2Fc", ("b", "a b/c")),
    ("s3.test", "/b/k", ("b", "k")),  # the domain itself is path-style (SeaweedFS, AWS)
    ("pub.s3.test", "/priv/k", ("pub", "priv/k")),  # virtual-hosted: the bucket is the Host's
    ("pub.s3.test:1234", "/k", ("pub", "k")),  # the port does not count (gorilla/mux drops it)
    ("a.b.s3.test", "/k", ("a.b", "k")),
    ("PUB.S3.TEST", "/priv/k", Aside.UNSURE_HOST),  # SeaweedFS: path-style priv/k; AWS: pub
    ("pub.s3.test.", "/priv/k", Aside.UNSURE_HOST),
    ("Pub.s3.test", "/k", Aside.UNSURE_HOST),  # SeaweedFS: bucket "Pub"
    ("attacker.example", "/b/k", Aside.UNKNOWN_HOST),
    ("pub.other.test", "/b/k", Aside.UNKNOWN_HOST),
    ("store.test:8333:1", "/b/k", Aside.UNSURE_HOST),
    ("store.test:x", "/b/k", Aside.UNSURE_HOST),
    (("store.test", "pub.s3.test"), "/b/k", Aside.UNSURE_HOST),  # two Host fields (HTTP/2 :authority and host)
    ((), "/b/k", Aside.UNSURE_HOST),
    ("store.test", "/b%2Fc/k", Aside.UNSURE_KEY),  # Go decodes, then splits (bucket b); AWS splits first
    ("store.test", "/b//k", Aside.UNSURE_KEY),  # SeaweedFS folds // and drops a leading /
    ("store.test", "/b/a//k", Aside.UNSURE_KEY),
    ("store.test", "/b/a%5Ck", Aside.UNSURE_KEY),  # SeaweedFS reads \\ as /
    ("store.test", "/b/a/./k", Aside.UNSURE_KEY),
    ("store.test", "/b/a/%2e%2e/k", Aside.UNSURE_KEY),
    ("store.test", "/b/a%zz", Aside.UNSURE_KEY),  # not an escape: the store answers 400
    ("store.test", "//k", Aside.UNSURE_KEY),
    ("store.test", "/b/k?acl", ("b", "k")),
    ("store.test", "/b", ("b", "")),
    ("store.test", "/", ("", "")),
    ("store.test", "/b/%ff%fe", ("b", "\udcff\udcfe")),  # bytes that are not UTF-8 stay as they are
    ("store.test", "*", Aside.UNSURE_KEY),
])
def test_the_store_reads_it_so(host, target, expected):
    assert outcome(read(sent(host, target), NAMES)) == expected


def test_a_connection_to_a_host_no_one_named_is_not_a_store():
    found = read(sent("attacker.example", connect="attacker.example", port=80), NAMES)
    assert isinstance(found, SetAside) and found.reason is Aside.UNKNOWN_STORE
    assert found.subject == "http://attacker.example:80" and "--store http://attacker.example:80" in found.hint
    assert outcome(read(sent(connect="STORE.TEST."), NAMES)) == ("b", "k")  # resolvers compare as DNS does
    assert outcome(read(sent(port=8334), NAMES)) is Aside.UNKNOWN_STORE
    # a virtual-hosted name of a store named by its domain (regular mode, http://BUCKET.s3.test/key)
    by_domain = Names((Store.named("http://s3.test:8333"),), frozenset({"s3.test"}), ("s3.test",))
    assert outcome(read(sent("pub.s3.test:8333", "/k", connect="pub.s3.test"), by_domain)) == ("pub", "k")


def test_the_proxys_own_address_is_a_path_style_name_and_localhost_on_loopback():
    assert outcome(read(sent("127.0.0.5:8080", listen="127.0.0.5"), NAMES)) == ("b", "k")
    assert outcome(read(sent("localhost:8080", listen="127.0.0.5"), NAMES)) == ("b", "k")
    assert outcome(read(sent("localhost:8080", listen="192.0.2.1"), NAMES)) is Aside.UNKNOWN_HOST
    assert outcome(read(sent("[::1]:8080", listen="::1"), NAMES)) == ("b", "k")


def test_where_the_proxys_own_requests_go():
    moved = Names((Store.named("http://store.test:8333", "http://10.0.0.9:9000/"),), NAMES.path_hosts, NAMES.vhost_domains)
    found = read(sent(), moved)
    assert isinstance(found, Reading) and found.endpoint == "http://10.0.0.9:9000" and found.host == "store.test:8333"


def test_two_vhost_domains_one_under_the_other_read_two_ways():
    names = Names((STORE,), frozenset({"store.test"}), ("s3.test", "x.s3.test"))
    assert outcome(read(sent("b.x.s3.test"), names)) is Aside.UNSURE_HOST
    # listed path-style, the subdomain is read so, and its own names under the parent domain
    names = Names((STORE,), frozenset({"store.test", "x.s3.test"}), ("s3.test",))
    assert outcome(read(sent("x.s3.test", "/b/k"), names)) == ("b", "k")
    assert outcome(read(sent("b.x.s3.test", "/k"), names)) == ("b.x", "k")


segments = st.text(st.characters(codec="utf-8", exclude_characters="/?#%\\"), min_size=1, max_size=8)


@given(st.lists(segments, min_size=1, max_size=4), st.binary(min_size=1, max_size=6))
def test_keys_keep_their_bytes_and_two_keys_never_ask_one_origin_url(parts, raw):
    """Any key the store reads (percent-encoded text, or raw bytes that are not UTF-8) reads as its
    own bytes, and the origin is asked for exactly those bytes."""
    from urllib.parse import quote, unquote_to_bytes

    texts = ["/".join(parts), "/".join(parts) + "/" + "".join(f"%{b:02X}" for b in raw)]
    keys = []
    for text in texts:
        target = "/b/" + quote(text, safe="/%")
        found = split_target(target, None)
        if found is None:  # a key stores read differently (a "." segment, "//", "\\", NUL): set aside
            assert not plain_key(unquote_to_bytes(text.encode()).decode("utf-8", "surrogateescape"))
            return
        keys.append(found[1])
        url = origin_url("http://origin.test/", found[1])
        assert unquote_to_bytes(url.removeprefix("http://origin.test/")) == unquote_to_bytes(text.encode())
    assert len({origin_url("http://origin.test/", key) for key in keys}) == len(set(keys))
