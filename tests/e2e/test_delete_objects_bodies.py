"""DeleteObjects bodies read as the store reads them (a differential test): many body shapes
(nesting, extra elements, namespaces and undeclared prefixes, repeated Keys, Quiet, what comes
before and after the root) go through the real mitmdump to a real SeaweedFS whose identities
limit a user to one prefix; what the proxy then did (tombstones, write-through deletes at the
origin, another SeaweedFS) must be exactly what the store deleted. A body the proxy cannot read
must not reach the store whole: nothing is deleted and the client gets 400 MalformedXML."""

from __future__ import annotations

import itertools

import httpx
import pytest
import requests
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.e2e.test_reading import h2_first
from tests.reading_support import signed, tombstoned
from tests.support import stored, write_identities
from tests.writethrough_support import ORIGIN_BUCKET, STORE_KEYS, Proxy, start_origin, write_through_rules

BUCKET = "dob-bucket"
PREFIXED = ("dobprefix", "dobprefixsecret")  # may write only BUCKET/mine/*
NAMES = ("mine/a", "mine/b", "theirs/c")
_count = itertools.count()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dob")
    config = write_identities(workdir / "s3.json", STORE_KEYS, {
        "prefixed": (PREFIXED, [f"Read:{BUCKET}/mine/*", f"Write:{BUCKET}/mine/*", f"List:{BUCKET}"]),
        "anonymous": (None, [f"Write:{BUCKET}/anonymous/*"]),  # a path SigV4 clients cannot sign
    })
    store = EmbeddedStore(workdir / "store", free_ports(1, with_grpc=True)[0], *STORE_KEYS,
                          extra_args=(f"-s3.config={config}",))
    store.start()
    origin = start_origin(workdir / "origin")
    proxy = None
    try:
        store.create_buckets([BUCKET])
        proxy = Proxy.of(workdir / "proxy", store, write_through_rules(workdir / "rules.json", origin.endpoint, BUCKET)).start()
        yield store, origin, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        origin.stop()
        store.stop()


def element(name: str, inner: str) -> str:
    return f"<{name}>{inner}</{name.split(' ')[0]}>"


@st.composite
def bodies(draw) -> str:
    """A DeleteObjects body naming the keys `{0}`, `{1}`, `{2}` (NAMES, formatted per case)."""
    names = {"Object": st.sampled_from(["Object"] * 4 + ["p:Object", "object", "a:b:Object", "s3:Object"]),
             "Key": st.sampled_from(["Key"] * 4 + ["p:Key", "key", "s3:Key", ":Key"])}
    key = st.sampled_from(["{0}", "{1}", "{2}"])

    def field() -> str:
        kind = draw(st.sampled_from(["key"] * 3 + ["nested", "comment", "text", "cdata"]))
        if kind == "key":
            return element(draw(names["Key"]), draw(key))
        if kind == "nested":
            return element(draw(st.sampled_from(["X", "Object", "Key"])), element("Key", draw(key)))
        return {"comment": "<!-- {2} -->", "text": " ", "cdata": "<Key><![CDATA[{0}]]></Key>"}[kind]

    def child() -> str:
        kind = draw(st.sampled_from(["object"] * 4 + ["quiet", "extra", "deep"]))
        if kind == "object":
            return element(draw(names["Object"]), "".join(field() for _ in range(draw(st.integers(0, 3)))))
        if kind == "quiet":
            return element("Quiet", draw(st.sampled_from(["true", "false", " true ", "1", "True", "yes"])))
        if kind == "extra":
            return element("Extra", element("Object", element("Key", draw(key))))
        return element("Object", element("Extra", element("Key", draw(key))))

    root = draw(st.sampled_from(["Delete"] * 3 + ['Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"',
                                                  'Delete xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"', "x:Delete"]))
    before = draw(st.sampled_from(["", "", '<?xml version="1.0" encoding="UTF-8"?>\n', "<!-- c -->", "text"]))
    after = draw(st.sampled_from(["", "", "\n", "<!-- c -->", "<x:Junk/>", "junk"]))
    return before + element(root, "".join(child() for _ in range(draw(st.integers(1, 4))))) + after


def post(proxy, body: bytes, keys=PREFIXED, protocol: str = "HTTP/1.1") -> httpx.Response:
    """POST ?delete, signed; over HTTP/2 through TLS (h2 offered first, as curl and Go do)."""
    host = proxy.url.removeprefix("http://")
    headers = signed("POST", host, f"/{BUCKET}?delete", body, keys)
    if protocol == "HTTP/2":
        with httpx.Client(http2=True, verify=h2_first(str(proxy.client_ca)), timeout=60) as client:
            answer = client.post(f"https://{host}/{BUCKET}?delete", content=body, headers=headers)
    else:
        with httpx.Client(timeout=60) as client:
            answer = client.post(f"{proxy.url}/{BUCKET}?delete", content=body, headers=headers)
    assert answer.http_version == protocol
    return answer


def check_one(world, template: str, keys=PREFIXED, protocol: str = "HTTP/1.1") -> tuple[set[str], httpx.Response]:
    """Puts NAMES (in the store and at the origin), sends the body; asserts the proxy's tombstones
    and the origin's copies agree with what the store deleted. Returns the keys the store deleted."""
    store, origin, proxy = world
    case = next(_count)
    keys_of = [f"{name}-{case}" for name in NAMES]
    admin, old = store.client(), origin.client()
    for key in keys_of:
        admin.put_object(Bucket=BUCKET, Key=key, Body=b"store " + key.encode())
        old.put_object(Bucket=ORIGIN_BUCKET, Key=key, Body=b"origin " + key.encode())
    body = template.format(*keys_of).encode()
    answer = post(proxy, body, keys, protocol)
    if currently_in_test_context():
        note(f"{body.decode()}\n{answer.status_code} {answer.text}")
    deleted = {key for key in keys_of if stored(admin, BUCKET, key) is None}
    assert tombstoned(proxy.spool, {(BUCKET, key) for key in keys_of}) == {(BUCKET, key) for key in deleted}
    proxy.wait_applied(within=30)
    assert {key for key in keys_of if stored(old, ORIGIN_BUCKET, key) is None} == deleted
    for key in keys_of:  # through the proxy: what the store deleted stays deleted, the rest is the store's
        got = requests.get(f"{proxy.url}/{BUCKET}/{key}", headers=signed("GET", proxy.url[7:], f"/{BUCKET}/{key}", b"", STORE_KEYS),
                           timeout=60)
        assert (got.status_code, got.content) == ((404, got.content) if key in deleted else (200, b"store " + key.encode()))
    return deleted, answer


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(template=bodies())
@example(template="<Delete><Object><Key>{0}</Key><X><Key>{2}</Key></X></Object></Delete>")
@example(template="<Delete><Object><Key>{1}</Key><Extra><Key>{2}</Key></Extra></Object></Delete>")
@example(template="<Delete><Quiet>true</Quiet><Object><Key>{0}</Key></Object><x:Junk/></Delete>")
@example(template="<Delete><Object><Key>{0}</Key></Object></Delete><junk/>")
@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_the_proxy_acts_on_exactly_what_the_store_deleted(world, protocol, template):
    check_one(world, template, protocol=protocol)


def test_an_undeclared_prefix_in_a_quiet_delete_is_read_and_the_key_stays_deleted(world):
    """Go accepts it, and so does the proxy now (expat without namespace processing)."""
    deleted, answer = check_one(world, '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>'
                                       "<Object><Key>{0}</Key></Object><x:Junk/></Delete>")
    assert answer.status_code == 200 and len(deleted) == 1


def test_a_key_asked_twice_in_a_quiet_delete_and_refused_once_stays_deleted(world):
    """Each <Error> of a quiet answer refuses one entry: here the first (its ETag does not match),
    while the second deleted the key (found by a second attacker round: no tombstone was left)."""
    deleted, answer = check_one(world, '<Delete><Quiet>true</Quiet><Object><Key>{0}</Key><ETag>"0000"</ETag></Object>'
                                       "<Object><Key>{0}</Key></Object></Delete>", STORE_KEYS)
    assert answer.status_code == 200 and len(deleted) == 1, answer.text


@pytest.mark.parametrize("template", [
    "<Delete><Quiet>true</Quiet><Object><Key>{0}</Key></Object></Delete>junk after the root",
    "text before the root<Delete><Quiet>true</Quiet><Object><Key>{0}</Key></Object></Delete>",
    "<Delete><Quiet>true</Quiet>" + "<Object><Key>{0}</Key></Object>" * 1001 + "</Delete>",
])
@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_a_body_the_proxy_cannot_read_never_reaches_the_store_whole(world, template, protocol):
    deleted, answer = check_one(world, template, protocol=protocol)
    assert deleted == set() and answer.status_code == 400 and "<Code>MalformedXML</Code>" in answer.text, answer.text
    assert "nothing was deleted" in answer.text


def test_a_delete_of_a_thousand_long_keys_logs_one_short_line(world):
    """The line named every key: about 1 MB per request."""
    store, _, proxy = world
    keys = [f"mine/many-{i:04d}-" + "x" * 990 for i in range(1000)]
    body = ("<Delete><Quiet>true</Quiet>" + "".join(f"<Object><Key>{key}</Key></Object>" for key in keys) + "</Delete>").encode()
    answer = post(proxy, body, STORE_KEYS)
    assert answer.status_code == 200, answer.text
    assert tombstoned(proxy.spool, {(BUCKET, keys[0]), (BUCKET, keys[-1])}) == {(BUCKET, keys[0]), (BUCKET, keys[-1])}
    line = next(line for line in proxy.log().splitlines() if "tombstone(s) for" in line and "many-0000" in line)
    assert len(line) < 8 * 1024 and line.endswith("and 995 more (1000 keys)"), line[:300]


def test_a_write_of_a_key_that_is_not_utf8_is_left_out_of_write_through(world):
    """It was journaled, and retried for ever (UnicodeEncodeError), holding its origin bucket's lane."""
    store, origin, proxy = world
    answer = requests.put(f"{proxy.url}/{BUCKET}/anonymous/bad%FFkey-{next(_count)}", data=b"bytes", timeout=60)
    assert answer.status_code == 200, answer.text
    proxy.wait_applied(within=30)
    assert proxy.metric("backorigin_writethrough_not_utf8_total") == 1
    assert "is left out: the key is not UTF-8 text" in proxy.log()
    check_one(world, "<Delete><Object><Key>{0}</Key></Object></Delete>")  # and the next write goes through
