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


def test_an_origin_client_refuses_a_dtd_before_botocore_reads_the_answer():
    """botocore parses a 200's whole body first (to find an <Error> in it), entities expanded."""
    import io

    import botocore.parsers
    import urllib3
    from botocore.awsrequest import AWSResponse

    from backorigin.listing.sources import origin_s3_client
    from tests.support import rule_of

    client = origin_s3_client("http://127.0.0.1:9", rule_of())
    seen = []

    def answer(request, **_):
        seen.append(request.url)
        raw = urllib3.HTTPResponse(io.BytesIO(BOMB + b"<ListBucketResult><Name>&b;</Name></ListBucketResult>"),
                                   status=200, preload_content=False)
        return AWSResponse(request.url, 200, {}, raw)

    client.meta.events.register("before-send.s3", answer)
    handlers = [h.__name__ for h in client.meta.events._emitter._handlers.prefix_search("before-parse.s3.ListObjectsV2")]
    assert handlers.index("check") < handlers.index("_handle_200_error")  # botocore's parses the whole body
    with pytest.raises(botocore.parsers.ResponseParserError, match="DOCTYPE"):
        client.list_objects_v2(Bucket="b")
    assert seen
