"""Checks on an origin body as it arrives, and the ETag the store will give it."""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import string
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backorigin.limits import PART_SIZE
from backorigin.miss.integrity import MIN_PART, SINGLE_PUT_MAX, BodyCheck, StoreETag, multipart_parts, part_layout, plain_md5

# Each property is stated in its test's docstring. Examples are drawn afresh on every run
# (database=None: no example database is kept); a failure prints the smallest example
# hypothesis found, which then belongs in a plain test next to the property.
PROPERTY = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

def test_store_etag_is_the_md5_or_the_multipart_rule():
    single = StoreETag(part_size=8)
    single.update(b"abc")
    assert single.value() == f'"{hashlib.md5(b"abc").hexdigest()}"'
    assert single.md5_base64 == base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    parts = StoreETag(part_size=4)
    for chunk in (b"ab", b"cdefgh", b"ij"):  # parts abcd, efgh, ij whatever the chunking
        parts.update(chunk)
    digests = b"".join(hashlib.md5(p).digest() for p in (b"abcd", b"efgh", b"ij"))
    assert parts.value() == f'"{hashlib.md5(digests).hexdigest()}-3"'
    exact = StoreETag(part_size=4)
    exact.update(b"abcd")  # a body of exactly one part goes up as one multipart part
    assert exact.value() == f'"{hashlib.md5(hashlib.md5(b"abcd").digest()).hexdigest()}-1"'
    for whole in (single, parts, exact):  # the whole body's MD5 too, one hash or two
        assert whole.md5_hex == hashlib.md5({single: b"abc", parts: b"abcdefghij", exact: b"abcd"}[whole]).hexdigest()


def test_a_plain_md5_etag_is_read_and_others_are_not():
    assert plain_md5('"0123456789ABCDEF0123456789abcdef"') == "0123456789abcdef0123456789abcdef"
    assert plain_md5("0123456789abcdef0123456789abcdef") == "0123456789abcdef0123456789abcdef"
    for other in ('"0123456789abcdef0123456789abcdef-2"', 'W/"0123456789abcdef0123456789abcdef"', '"x"', "", None):
        assert plain_md5(other) is None


# body checks, properties (hypothesis) ---------------------------------------------------------


def _md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def _fed(check: BodyCheck, body: bytes, cuts: list[int]) -> BodyCheck:
    bounds = [0, *sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    for start, end in itertools.pairwise(bounds):
        check.update(body[start:end])
    return check


def _verdict(check: BodyCheck) -> tuple:
    return check.md5_base64, check.size, check.failure(), check.mismatch()


PLAIN = st.binary(max_size=3000)
GZIPPED = PLAIN.map(lambda b: gzip.compress(b, mtime=0))
TRUNCATED_GZIP = GZIPPED.flatmap(lambda g: st.integers(0, len(g) - 1).map(lambda n: g[:n]))
# bytes after the gzip member: garbage, or a second member
TRAILING_GZIP = st.tuples(GZIPPED, st.one_of(st.binary(min_size=1, max_size=20), GZIPPED)).map(b"".join)
_HEADER_TEXT = st.text(alphabet=string.printable, max_size=30)


@PROPERTY
@given(
    body_and_gzip=st.one_of(st.tuples(PLAIN, st.booleans()), st.tuples(GZIPPED, st.just(True)),
                            st.tuples(TRUNCATED_GZIP, st.just(True)), st.tuples(TRAILING_GZIP, st.just(True))),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    content_length=st.one_of(st.none(), _HEADER_TEXT),
    content_md5=st.one_of(st.none(), _HEADER_TEXT),
    etag=st.one_of(st.none(), _HEADER_TEXT, st.binary(min_size=16, max_size=16).map(lambda d: f'"{d.hex()}"')),
)
def test_body_check_does_not_depend_on_chunking(body_and_gzip, cuts, content_length, content_md5, etag):
    body, gzipped = body_and_gzip
    headers = dict(content_length=content_length, content_md5=content_md5, etag=etag, gzip=gzipped)

    def new():
        headers = {"content-length": content_length, "content-md5": content_md5, "etag": etag,
                   "content-encoding": "gzip" if gzipped else None}
        return BodyCheck.for_headers({k: v for k, v in headers.items() if v is not None})  # None: no such header

    whole, chunked = _fed(new(), body, []), _fed(new(), body, cuts)
    assert _verdict(chunked) == _verdict(whole), headers
    assert (whole.md5_base64, whole.size) == (_md5_b64(body), len(body))


@st.composite
def correct_headers(draw, body: bytes):
    length = draw(st.sampled_from([str(len(body)), f" {len(body)} ", f"0{len(body)}"]))
    md5 = _md5_b64(body)
    return {"content-length": length,
            "content-md5": draw(st.sampled_from([md5, f" {md5} "])),
            "etag": draw(st.sampled_from([f'"{hashlib.md5(body).hexdigest()}"', hashlib.md5(body).hexdigest().upper(),
                                          '"d41d8cd98f00b204e9800998ecf8427e-2"', 'W/"x"', ""]))}


@PROPERTY
@given(st.one_of(PLAIN.map(lambda b: (b, False)), GZIPPED.map(lambda b: (b, True))).flatmap(
    lambda bg: st.tuples(st.just(bg), correct_headers(bg[0]), st.lists(st.integers(0, 10_000), max_size=10))))
def test_body_check_accepts_correct_headers(drawn):
    """A Content-Length and Content-MD5 (and MD5 ETag) that describe the body never fail."""
    (body, gzipped), headers, cuts = drawn
    check = _fed(BodyCheck.for_headers({**headers, "content-encoding": "gzip" if gzipped else ""}), body, cuts)
    assert (check.failure(), check.mismatch()) == ("", "")


WRONG_NUMBER_TEXT = st.one_of(
    st.sampled_from(["", " ", "-1", "+5", "5.0", "0x10", "1e3", "5 5", "five", "∞"]),
    st.text(alphabet=string.ascii_letters + "-+.,; ", min_size=1, max_size=10),
)


@PROPERTY
@given(body=PLAIN, cuts=st.lists(st.integers(0, 10_000), max_size=10),
       length=st.one_of(st.integers(0, 10**12).map(str), WRONG_NUMBER_TEXT))
def test_body_check_fails_on_a_wrong_content_length(body, cuts, length):
    assume(not (length.strip().isdigit() and int(length) == len(body)))
    check = _fed(BodyCheck(content_length=length), body, cuts)
    assert check.failure()


@PROPERTY
@given(body=PLAIN, cuts=st.lists(st.integers(0, 10_000), max_size=10),
       md5=st.one_of(st.binary(min_size=16, max_size=16).map(lambda d: base64.b64encode(d).decode()), st.text(min_size=1)))
def test_body_check_flags_a_wrong_content_md5(body, cuts, md5):
    assume(md5.strip() != _md5_b64(body))
    check = _fed(BodyCheck(content_md5=md5), body, cuts)
    assert check.mismatch() and not check.failure()


@pytest.mark.parametrize("length, body", [("²", b"xx"), ("①", b"x"), ("٥", b"12345"), ("\uff15", b"12345")])
def test_body_check_fails_on_a_content_length_in_non_ascii_digits(length, body):
    """str.isdigit() and int() accept these; HTTP's Content-Length is ASCII digits only."""
    assert _fed(BodyCheck(content_length=length), body, []).failure()


def test_body_check_fails_on_a_content_length_of_5000_digits():
    assert BodyCheck(content_length="1" * 5000).failure()


MD5 = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("etag, parts", [
    (f'"{MD5}-3"', 3), (f"{MD5}-10000", 10000), (f'"{MD5}"', None), ('W/"x-3"', None), (f'"{MD5}-"', None),
    (f'"{MD5}-123456"', None), (None, None), ("", None),
])
def test_a_multipart_etag_says_how_many_parts(etag, parts):
    assert multipart_parts(etag) == parts


MiB = 1024 * 1024


@pytest.mark.parametrize("etag, size, first_part, layout", [
    # a plain MD5: one PUT gives the store's ETag the same MD5, up to the largest PUT
    (f'"{MD5}"', 100 * MiB, None, (SINGLE_PUT_MAX + 1, f'"{MD5}"')),
    (f'"{MD5}"', SINGLE_PUT_MAX, None, (SINGLE_PUT_MAX + 1, f'"{MD5}"')),
    (f'"{MD5}"', SINGLE_PUT_MAX + 1, None, (PART_SIZE, None)),
    (f'"{MD5}"', None, None, (PART_SIZE, None)),  # no length (chunked): parts may be needed
    # the origin's parts: 8 MiB ones, the last one shorter
    (f'"{MD5}-3"', 20 * MiB, 8 * MiB, (8 * MiB, f'"{MD5}-3"')),
    (f'"{MD5}-2"', 10 * MiB, 5 * MiB, (5 * MiB, f'"{MD5}-2"')),
    (f'"{MD5}-1"', 3, 3, (3, f'"{MD5}-1"')),  # one part may be small
    (f'"{MD5}-3"', 20 * MiB, None, (PART_SIZE, None)),  # the origin did not say its first part
    (f'"{MD5}-3"', 30 * MiB, 8 * MiB, (PART_SIZE, None)),  # parts of differing sizes: cannot be redone
    (f'"{MD5}-3"', 16 * MiB, 8 * MiB, (PART_SIZE, None)),  # 2 parts would hold it: not 3 equal ones
    (f'"{MD5}-3"', 6 * MiB, 2 * MiB, (PART_SIZE, None)),  # parts under S3's smallest
    ('W/"weak"', 10, None, (PART_SIZE, None)),
])
def test_the_part_layout_keeps_the_origins_etag_when_it_can(etag, size, first_part, layout):
    assert part_layout(etag, size, first_part) == layout
    assert MIN_PART == 5 * MiB


@pytest.mark.parametrize("etag, content_md5, layout", [
    (None, base64.b64encode(bytes.fromhex(MD5)).decode(), (SINGLE_PUT_MAX + 1, f'"{MD5}"')),
    ('"5e-1a2b"', base64.b64encode(bytes.fromhex(MD5)).decode(), (SINGLE_PUT_MAX + 1, f'"{MD5}"')),  # nginx's ETag
    ('"' + "0" * 32 + '"', base64.b64encode(bytes.fromhex(MD5)).decode(), (SINGLE_PUT_MAX + 1, '"' + "0" * 32 + '"')),
    (f'"{MD5}-3"', base64.b64encode(bytes.fromhex(MD5)).decode(), (PART_SIZE, None)),  # parts it cannot redo
    (None, "not base64!", (PART_SIZE, None)),
    (None, base64.b64encode(b"short").decode(), (PART_SIZE, None)),
])
def test_a_content_md5_announces_the_etag_of_a_single_put(etag, content_md5, layout):
    """Without an MD5 ETag of its own, an origin's Content-MD5 says the ETag of a single PUT in advance."""
    assert part_layout(etag, 100 * MiB, None, content_md5) == layout


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=16), st.lists(st.integers(1, 64), max_size=8))
@PROPERTY
def test_the_etag_of_an_s3_multipart_upload_is_announced_for_its_layout(body, part, cuts):
    """Bodies uploaded as S3 does (equal parts of `part`, the last shorter) get back the announced
    multipart ETag when their first part's size is given, whatever the chunks they arrive in
    (S3's smallest part made 1 byte, to draw small bodies)."""
    assume(len(body) > 0)
    chunks = [body[i:i + part] for i in range(0, len(body), part)]
    origin = '"' + hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest() + f'-{len(chunks)}"'
    with mock.patch("backorigin.miss.integrity.MIN_PART", 1):
        part_size, announced = part_layout(origin, len(body), min(part, len(body)))
    etag = StoreETag(part_size)
    for piece in split(body, cuts):
        etag.update(piece)
    assert announced == origin == etag.value()


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(body[at:at + cut])
        at += cut
    return [*pieces, body[at:]]
