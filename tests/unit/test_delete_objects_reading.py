"""A DeleteObjects body read as Go's encoding/xml reads it (the store's parser), and a body the
proxy cannot read held back from the store (deletes.deletes.ReadingBody)."""

from __future__ import annotations

import pytest

from backorigin.deletes.bodies import GUARD_HELD, ReadingBody, not_refused
from backorigin.xmlsafe import ObjectsReader, go_local_name


def read(body: bytes, chunk: int = 7) -> ObjectsReader:
    reader = ObjectsReader(frozenset({"Object"}))
    for start in range(0, len(body), chunk):
        reader.feed(body[start:start + chunk])
    reader.finish()
    return reader


@pytest.mark.parametrize("body, keys", [
    (b"<Delete><Object><Key>mine/r1</Key><X><Key>theirs/k5</Key></X></Object></Delete>", ["mine/r1"]),
    (b"<Delete><Extra><Object><Key>theirs</Key></Object></Extra><Object><Key>a</Key></Object></Delete>", ["a"]),
    (b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>", ["b"]),
    (b"<Delete><Object><Key>a<X>hidden</X>b<!-- c -->c</Key></Object></Delete>", ["abc"]),
    (b"<Delete><p:Object><q:Key>a</q:Key></p:Object><x:Junk/></Delete>", ["a"]),
    (b'<s3:Delete xmlns:s3="urn:x"><s3:Object><s3:Key>a</s3:Key></s3:Object></s3:Delete>', ["a"]),
    (b"<Delete><object><Key>a</Key></object><Object><key>b</key></Object><Object><a:b:Key>c</a:b:Key></Object></Delete>", []),
    (b"<Delete><Object><Key><![CDATA[a&b]]></Key></Object></Delete>", ["a&b"]),
])
def test_keys_are_what_go_reads(body, keys):
    assert read(body).keys("Object") == keys


@pytest.mark.parametrize("value, quiet", [("true", True), (" 1 ", True), ("True", True), ("false", False), ("", False)])
def test_quiet_is_read_as_strconv_parsebool(value, quiet):
    assert read(f"<Delete><Quiet>{value}</Quiet><Object><Key>a</Key></Object></Delete>".encode()).quiet is quiet


def test_local_names_split_as_go_splits_them():
    assert [go_local_name(n) for n in ("Key", "p:Key", ":Key", "Key:", "a:b:Key")] == ["Key", "Key", ":Key", "Key:", "a:b:Key"]


def passed(body: bytes, chunk: int) -> tuple[bytes, ReadingBody]:
    stream = ReadingBody(ObjectsReader(frozenset({"Object"})), guard=True)
    out = [part for start in range(0, len(body), chunk) for part in stream(body[start:start + chunk])]
    assert b"</Delete>" not in b"".join(out)  # never before the whole body was read
    out += stream(b"")
    return b"".join(out), stream


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
def test_a_readable_body_passes_whole_and_its_end_only_last(chunk):
    body = b"<Delete><Object><Key>a</Key></Object></Delete>\n<!-- c -->"
    out, stream = passed(body, chunk)
    assert out == body and stream.reader.keys("Object") == ["a"]


@pytest.mark.parametrize("body", [
    b"<Delete><Object><Key>a</Key></Object></Delete>junk",
    b"text<Delete><Object><Key>a</Key></Object></Delete>",
    b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
    b"<Delete><Object><Key>a</Key></Object></Delete>" + b" " * (GUARD_HELD + 1),
])
def test_an_unreadable_body_reaches_the_store_spoilt_before_its_end(body):
    for chunk in (5, 4096):
        out, stream = passed(body, chunk)
        assert stream.reader.failed and len(out) == len(body) and b"</Delete>" not in out and b"\0" in out


@pytest.mark.parametrize("asked, errors, deleted", [
    # a key asked twice, one entry refused (an ETag condition, say): the other deleted it
    ([("dup", None), ("dup", None)], [("dup", None)], [("dup", None)]),
    ([("dup", None), ("dup", None)], [("dup", None), ("dup", None)], []),
    ([("a", None), ("b", None)], [("a", None)], [("b", None)]),
    # an error naming a version refuses that version's entry only
    ([("k", "v1"), ("k", None)], [("k", "v1")], [("k", None)]),
    ([("k", "v1"), ("k", "v2")], [("k", "v2")], [("k", "v1")]),
    # an error for a key nobody asked for refuses nothing
    ([("a", None)], [("z", None)], [("a", None)]),
])
def test_each_error_of_a_quiet_answer_refuses_one_entry(asked, errors, deleted):
    assert not_refused(asked, errors) == deleted
