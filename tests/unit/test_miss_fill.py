"""A fill: one origin GET's body on its way into the spool, read by every client meanwhile."""

from __future__ import annotations

import asyncio
import os

import pytest

from backorigin.miss import objectmeta
from backorigin.miss.fill import Fill, FillBroken, Fills, Settled
from backorigin.miss.origin import Failure, OriginResult
from backorigin.s3.addressing import ObjectRef
from backorigin.writeback.spool import ObjectUpload
from tests.support import rule_of

KEY = ("http://store", "b", "k")


def new_fill(tmp_path) -> Fill:
    def describe(url: str, headers: tuple[tuple[str, str], ...], announced_at: str) -> ObjectUpload:
        return objectmeta.describe("http://store", ObjectRef("b", "k"), rule_of(), OriginResult(url, 200, headers), announced_at)

    return Fill(KEY, tmp_path / "k.download", describe)


def settle_ok(fill: Fill, body: bytes) -> None:
    fill.settle(Settled(OriginResult("http://o/k", 200, size=len(body), md5="m", etag='"e"'), "queued"))


async def test_a_reader_gets_bytes_as_they_arrive_but_the_last_one_only_once_settled(tmp_path):
    fill = new_fill(tmp_path)
    fill.begin(200, (("content-length", "6"), ("content-type", "text/plain")), "http://o/k", None)
    await fill.began()
    assert fill.declared == 6 and fill.upload is not None and fill.upload.headers == {"content-type": "text/plain"}
    fd = fill.open_reader()
    try:
        fill.write(b"abc")
        assert await fill.read(fd, 0, 5, 1024) == b"abc"
        fill.write(b"def")
        assert await fill.read(fd, 3, 5, 1024) == b"de"  # the last byte waits for the fill to settle
        last = asyncio.ensure_future(fill.read(fd, 5, 5, 1024))
        await asyncio.sleep(0)  # one turn of the loop: the reader runs to its one await, the fill's growing
        assert not last.done()
        settle_ok(fill, b"abcdef")
        assert await last == b"f"
        assert await fill.read(fd, 6, 5, 1024) == b""
    finally:
        os.close(fd)
    assert fill.validators.etag == '"e"' and fill.upload.size == 6


async def test_readers_at_other_offsets_each_get_their_own_bytes(tmp_path):
    fill = new_fill(tmp_path)
    fill.begin(200, (), "http://o/k", None)

    async def read_all(first: int, last: int) -> bytes:
        fd = fill.open_reader()
        got, offset = b"", first
        try:
            while offset <= last:
                chunk = await fill.read(fd, offset, last, 2)
                got += chunk
                offset += len(chunk)
        finally:
            os.close(fd)
        return got

    readers = [asyncio.ensure_future(read_all(first, last)) for first, last in ((0, 9), (3, 6), (9, 9))]
    for piece in (b"0123", b"45", b"6789"):
        fill.write(piece)
        await asyncio.sleep(0)
    settle_ok(fill, b"0123456789")
    assert await asyncio.gather(*readers) == [b"0123456789", b"3456", b"9"]


async def test_a_body_that_breaks_off_fails_its_readers(tmp_path):
    fill = new_fill(tmp_path)
    fill.begin(200, (("content-length", "10"),), "http://o/k", None)
    fill.write(b"01234")
    fd = fill.open_reader()
    try:
        waiting = asyncio.ensure_future(fill.read(fd, 5, 9, 1024))
        await asyncio.sleep(0)
        broken = OriginResult.failed("http://o/k", Failure.INTEGRITY, "body of 5 bytes, Content-Length said 10")
        fill.settle(Settled(broken, "none (no object)"))
        with pytest.raises(FillBroken, match="Content-Length said 10"):
            await waiting
    finally:
        os.close(fd)


async def test_the_body_stays_readable_after_its_spool_file_is_gone(tmp_path):
    fill = new_fill(tmp_path)
    fill.begin(200, (), "http://o/k", None)
    fill.write(b"body")
    settle_ok(fill, b"body")
    fill.path.unlink()  # uploaded and finished by the write-back
    fd = fill.open_reader()
    try:
        assert await fill.read(fd, 0, 3, 1024) == b"body"
    finally:
        os.close(fd)


async def test_a_spooled_fill_from_an_earlier_run_is_whole_and_settled(tmp_path):
    body = tmp_path / "x.body"
    body.write_bytes(b"spooled")
    upload = ObjectUpload("http://store", "b", "k", {}, {"backorigin-origin-url": "http://o/k"}, 7, "m", '"e"')
    fill = Fill.spooled(KEY, body, upload)
    await fill.began()
    assert (await fill.wait_settled()).result.ok and fill.validators.etag == '"e"'
    fd = fill.open_reader()
    try:
        assert await fill.read(fd, 0, 6, 1024) == b"spooled"
    finally:
        os.close(fd)


def test_a_fill_is_dropped_only_by_itself(tmp_path):
    fills = Fills()
    first, second = Fill.spooled(KEY, _empty(tmp_path, "a"), _upload()), Fill.spooled(KEY, _empty(tmp_path, "b"), _upload())
    fills.add(first)
    fills.add(second)  # a newer fill of the same object replaces the first
    fills.drop(first)
    assert fills.get(KEY) is second and len(fills) == 1
    fills.drop(second)
    assert fills.get(KEY) is None and len(fills) == 0


def _empty(tmp_path, name: str):
    path = tmp_path / f"{name}.body"
    path.write_bytes(b"")
    return path


def _upload() -> ObjectUpload:
    return ObjectUpload("http://store", "b", "k", {}, {}, 0, "", '"e"')
