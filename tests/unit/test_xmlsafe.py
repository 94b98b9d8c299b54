"""backorigin.xmlsafe: XML from clients, stores and origins, read without DTDs or entities, within
a size bound, as its bytes arrive."""

from __future__ import annotations

import pytest

from backorigin.xmlsafe import ObjectsReader, XMLRefused, parse, refuse_dtd

NS = b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
BOMB = b'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'


def read(body: bytes, elements=("Object",), chunk: int = 5, **bounds) -> ObjectsReader:
    reader = ObjectsReader(frozenset(elements), **bounds)
    for start in range(0, len(body), chunk):
        reader.feed(body[start:start + chunk])
    reader.finish()
    return reader


def test_keys_and_versions_of_a_delete_objects_request_fed_in_pieces():
    body = (b"<Delete" + NS + b"><Object><Key>a &amp; b</Key><VersionId>v1</VersionId></Object>"
            b"<Object><Key>c</Key></Object><Object><VersionId>orphan</VersionId></Object><Quiet>true</Quiet></Delete>")
    assert read(body).objects == [("Object", "a & b", "v1"), ("Object", "c", None)]


def test_the_answer_names_what_was_deleted_and_what_was_refused():
    body = b"<DeleteResult><Deleted><Key>a</Key></Deleted><Error><Key>b</Key><Code>AccessDenied</Code></Error></DeleteResult>"
    reader = read(body, ("Deleted", "Error"))
    assert reader.keys("Deleted") == ["a"] and reader.keys("Error") == ["b"]


@pytest.mark.parametrize("body, why", [
    (BOMB + b"<Delete><Object><Key>&b;</Key></Object></Delete>", "DOCTYPE"),
    (b'<!DOCTYPE d SYSTEM "http://127.0.0.1/x.dtd"><Delete/>', "DOCTYPE"),
    (b"<Delete><Object><Key>a</Key></Object>", "not well-formed"),
    (b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>", "more than 1000 objects"),
    (b"<Delete><Object><Key>" + b"k" * 5000 + b"</Key></Object></Delete>", "longer than"),
])
def test_what_is_not_read(body, why):
    reader = read(body, chunk=4096)
    assert reader.objects == [] and why in reader.failed


def test_a_body_past_the_bound_is_not_read_further():
    reader = read(b"<Delete>" + b" " * 100 + b"</Delete>", limit=50)
    assert "larger than 50 bytes" in reader.failed


def test_a_whole_document_without_a_dtd_is_parsed():
    assert parse(b"<a><b>x</b></a>", 100).findtext("b") == "x"
    for body, why in ((BOMB + b"<a>&b;</a>", "DOCTYPE"), (b"<a>", "not well-formed"), (b"<a/>" + b" " * 200, "larger")):
        with pytest.raises(XMLRefused, match=why):
            parse(body, 100)


def test_a_dtd_before_the_root_is_refused_and_only_the_prolog_is_read():
    with pytest.raises(XMLRefused, match="DOCTYPE"):
        refuse_dtd(b'<?xml version="1.0"?>\n<!-- c -->' + BOMB + b"<ListBucketResult/>")
    refuse_dtd(b"<ListBucketResult><Name>b</Name>" + b"<Contents/>" * 10 + b"</ListBucketResult>")
    refuse_dtd(b"<html>not xml at all")  # left to the caller's parser
    with pytest.raises(XMLRefused, match="larger"):
        refuse_dtd(b"<a/>" * 10, limit=8)
