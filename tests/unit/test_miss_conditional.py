"""Conditionals and ranges on an object, in S3's order."""

from __future__ import annotations

import pytest

from backorigin.miss.conditional import Answer, RangeNotSatisfiable, Validators, byte_range, needs_etag, plan


@pytest.mark.parametrize(
    "header, size, expected",
    [("", 10, None), ("bytes=0-4", 10, (0, 4)), ("bytes=5-", 10, (5, 9)), ("bytes=-3", 10, (7, 9)),
     ("bytes=-30", 10, (0, 9)), ("bytes=8-100", 10, (8, 9)), ("bytes=0-1,3-4", 10, None), ("items=0-1", 10, None),
     ("bytes=5-2", 10, None)],
)
def test_byte_ranges(header, size, expected):
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 10)


ETAG = '"0123456789abcdef0123456789abcdef"'
MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"
EARLIER, LATER = "Tue, 01 Dec 2026 09:00:00 GMT", "Tue, 01 Dec 2026 11:00:00 GMT"


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, Answer(200, 0, 9, 10)),
        ({"range": "bytes=2-4"}, Answer(206, 2, 4, 10)),
        ({"range": "bytes=20-"}, Answer(416, size=10)),
        ({"if-match": ETAG}, Answer(200, 0, 9, 10)),
        ({"if-match": '"other", ' + ETAG}, Answer(200, 0, 9, 10)),
        ({"if-match": "*"}, Answer(200, 0, 9, 10)),
        ({"if-match": '"other"'}, Answer(412, size=10)),
        ({"if-match": '"other"', "range": "bytes=0-1"}, Answer(412, size=10)),
        ({"if-unmodified-since": EARLIER}, Answer(412, size=10)),
        ({"if-unmodified-since": LATER}, Answer(200, 0, 9, 10)),
        ({"if-match": ETAG, "if-unmodified-since": EARLIER}, Answer(200, 0, 9, 10)),  # If-Match wins (S3)
        ({"if-none-match": ETAG}, Answer(304, size=10)),
        ({"if-none-match": '"other"'}, Answer(200, 0, 9, 10)),
        ({"if-modified-since": LATER}, Answer(304, size=10)),
        ({"if-modified-since": MODIFIED}, Answer(304, size=10)),
        ({"if-modified-since": EARLIER}, Answer(200, 0, 9, 10)),
        ({"if-none-match": '"other"', "if-modified-since": LATER}, Answer(200, 0, 9, 10)),  # If-None-Match wins
        ({"if-modified-since": "not a date"}, Answer(200, 0, 9, 10)),
        ({"range": "bytes=0-1", "if-range": ETAG}, Answer(206, 0, 1, 10)),
        ({"range": "bytes=0-1", "if-range": '"other"'}, Answer(200, 0, 9, 10)),
        ({"range": "bytes=0-1", "if-range": LATER}, Answer(206, 0, 1, 10)),
        ({"range": "bytes=0-1", "if-range": EARLIER}, Answer(200, 0, 9, 10)),
    ],
)
def test_conditionals_and_ranges_as_s3_answers_them(headers, expected):
    assert plan(headers.get, 10, Validators(ETAG, MODIFIED)) == expected


def test_unknown_etag_never_matches_and_answers_say_their_range():
    assert plan({"if-match": ETAG}.get, 10, Validators(None, MODIFIED)).status == 412
    assert needs_etag({"if-range": ETAG}.get) and not needs_etag({"range": "bytes=0-1"}.get)
    assert Answer(206, 2, 4, 10).content_range == "bytes 2-4/10" and Answer(416, size=10).content_range == "bytes */10"
    assert Answer(200, 0, -1, 0).length == 0


@pytest.mark.parametrize("headers, status", [
    ({"if-match": '"origin-3"'}, 200), ({"if-match": ETAG}, 200), ({"if-match": '"other"'}, 412),
    ({"if-none-match": '"origin-3"'}, 304), ({"range": "bytes=0-1", "if-range": '"origin-3"'}, 206),
])
def test_an_s3_origins_etag_the_store_will_not_keep_still_names_the_object(headers, status):
    assert plan(headers.get, 10, Validators(ETAG, MODIFIED, '"origin-3"')).status == status
