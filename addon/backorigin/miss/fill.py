"""One origin GET of one object, shared by every client that misses it.

A `Fill` is the origin's body on its way into the spool: the fetch writes each chunk to a
file in the spool directory, and every client that misses the object meanwhile (or until
its write-back has landed) reads that file from its own offset, waiting for bytes that
have not arrived yet. So an object is fetched once per proxy however the misses are timed,
memory stays bounded at any size, and a range is served as soon as its bytes are there.

No answer is complete before the fill is settled: a reader holds back the last byte of
what it sends until the body is spooled with its manifest (see Mirror), so a client that
has its whole answer can rely on the object landing even if the proxy is killed.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.utils import formatdate
from pathlib import Path

from backorigin.miss.conditional import Validators
from backorigin.miss.integrity import decimal, multipart_parts
from backorigin.miss.leasestore import Lease
from backorigin.miss.origin import OriginResult, SinkFailed
from backorigin.s3.addressing import ObjectKey
from backorigin.writeback.spool import ObjectUpload

RESERVE_CHECKED_EVERY = 1024 * 1024  # bytes written between two looks at the disk's free space


class FillBroken(Exception):
    """The origin's body broke off (or failed a check) after readers had started."""


@dataclass(frozen=True)
class Settled:
    """How a fill ended: the origin's result and what became of the write-back."""

    result: OriginResult
    writeback: str  # queued, none (<why>)


class Fill:
    """A body arriving from the origin into `path`; `describe` says what the object is
    (headers, metadata, Last-Modified) once the origin's headers are known."""

    def __init__(
        self, key: ObjectKey, path: Path, describe: Callable[[str, tuple[tuple[str, str], ...], str], ObjectUpload]
    ) -> None:
        self.key = key
        self.path = path
        self._describe = describe
        self._write_fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._read_fd = self._open_for_readers(path)
        self.upload: ObjectUpload | None = None  # known once the origin's headers are in
        self.declared: int | None = None  # the origin's Content-Length, when it gave one
        self.written = 0
        self.settled: Settled | None = None
        self._grew = asyncio.Event()
        self._began = asyncio.Event()
        self.landed = asyncio.Event()  # the write-back has ended (stored, or found there, or failed)
        self.manifest: Path | None = None  # its write-back's manifest, once spooled
        self.deleted = False  # deleted through the proxy while it was arriving: never spooled
        self.announced: str | None = None  # the ETag known before the body (the origin's, when the store will keep it)
        self.origin_etag: str | None = None  # an S3 origin's ETag the store will not keep (conditional.Validators)
        self.keep_free = 0  # bytes the disk keeps free (backorigin_spool_min_free): the body never takes them
        self._unchecked = 0  # bytes written since the free space was last looked at
        self.lease: Lease | None = None  # this proxy's turn in the fleet (miss.leases), held until the fill is dropped

    @classmethod
    def spooled(cls, key: ObjectKey, path: Path, upload: ObjectUpload) -> Fill:
        """A fill that finished in an earlier run: its body is spooled, its write-back pending."""
        fill = cls.__new__(cls)
        fill.key, fill.path, fill.upload = key, path, upload
        fill._write_fd, fill._read_fd = None, fill._open_for_readers(path)
        fill.declared = fill.written = upload.size
        fill.settled = Settled(OriginResult(upload.metadata.get("backorigin-origin-url", ""), 200, size=upload.size,
                                            md5=upload.md5, etag=upload.etag), "queued")
        fill._grew, fill._began, fill.landed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        fill.manifest, fill.deleted, fill.announced, fill.origin_etag, fill.lease = None, False, upload.etag, None, None
        fill.keep_free, fill._unchecked = 0, 0
        fill._began.set()
        fill._grew.set()
        return fill

    # the origin's side (origin.BodySink) ------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._began.is_set()

    def begin(self, status: int, headers: tuple[tuple[str, str], ...], url: str, etag: str | None) -> None:
        self.declared = decimal(next((v for k, v in headers if k.lower() == "content-length"), None))
        self._keep_room(self.declared or 0)
        self.upload = self._describe(url, headers, formatdate(usegmt=True))
        self.announced = etag
        origin_etag = next((v for k, v in headers if k.lower() == "etag"), None)
        self.origin_etag = origin_etag if multipart_parts(origin_etag) and origin_etag != etag else None
        self._began.set()

    def write(self, chunk: bytes) -> None:
        assert self._write_fd is not None, "no write after close_body"
        self._unchecked += len(chunk)
        if self._unchecked >= RESERVE_CHECKED_EVERY:
            self._keep_room(self._unchecked)
            self._unchecked = 0
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._write_fd, view):]
        except OSError as e:  # a full disk: the fetch ends, and the body is given up
            raise SinkFailed(f"the spool cannot keep the body: {e}") from e
        self.written += len(chunk)
        self._wake()

    def _keep_room(self, coming: int) -> None:
        """SinkFailed when `coming` more bytes would take the disk below `keep_free`: the reserve
        holds while the body arrives, not only when it starts."""
        if self.keep_free and self._write_fd is not None:
            disk = os.fstatvfs(self._write_fd)
            if disk.f_bavail * disk.f_frsize - coming < self.keep_free:
                raise SinkFailed("the spool's disk is down to backorigin_spool_min_free")

    def give_back(self) -> None:
        """A fill that failed gives its disk space back at once: its readers are told it broke
        (`read` raises) before they read again, so its body can go even while they hold it open."""
        assert self.settled is not None and not self.settled.result.ok
        try:
            os.truncate(self.path, 0)
        except OSError:
            pass  # already gone
        self.path.unlink(missing_ok=True)

    def close_body(self, fsync: bool) -> None:
        if self._write_fd is not None:
            if fsync:
                os.fsync(self._write_fd)
            os.close(self._write_fd)
            self._write_fd = None

    def settle(self, settled: Settled) -> None:
        """The fetch is over and the body spooled (or given up): release every reader."""
        self.close_body(fsync=False)
        self.settled = settled
        if self.upload is not None and settled.result.ok:
            r = settled.result
            self.upload = replace(self.upload, size=r.size, md5=r.md5, etag=r.etag, part_size=r.part_size)
        self._began.set()
        self._wake()

    def _open_for_readers(self, path: Path) -> int:
        """The descriptor readers duplicate: it lives as long as the fill (anyone who can
        still reach the fill may still read it), so the body stays readable after the spool
        file is uploaded and removed."""
        fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, fd)
        return fd

    def _wake(self) -> None:
        self._grew.set()
        self._grew = asyncio.Event()

    # the readers' side -------------------------------------------------------------------------

    async def began(self) -> None:
        """Until the origin's final headers are in (or the fetch ended without a body)."""
        await self._began.wait()

    async def wait_settled(self) -> Settled:
        while self.settled is None:
            await self._grew.wait()
        return self.settled

    @property
    def validators(self) -> Validators:
        """The ETag once the body is whole (or, before, the one known in advance) and the Last-Modified."""
        assert self.upload is not None
        etag = self.upload.etag if self.settled is not None and self.settled.result.ok else self.announced
        return Validators(etag, self.upload.last_modified, self.origin_etag)

    def open_reader(self) -> int:
        """A descriptor of the body for one reader (close it when done)."""
        return os.dup(self._read_fd)

    async def read(self, fd: int, offset: int, last: int, limit: int) -> bytes:
        """Up to `limit` bytes from `offset`, never past `last`; the byte at `last` only once
        the fill is settled (an answer is never complete before its object is spooled)."""
        while True:
            settled = self.settled
            if settled is not None and not settled.result.ok:
                raise FillBroken(settled.result.why)
            end = last + 1 if settled is not None else min(self.written, last)
            if offset < end:
                return os.pread(fd, min(limit, end - offset), offset)
            if settled is not None:
                return b""
            await self._grew.wait()


class Fills:
    """The fills of this proxy by object, from the first miss until the write-back lands."""

    def __init__(self) -> None:
        self._fills: dict[ObjectKey, Fill] = {}

    def __len__(self) -> int:
        return len(self._fills)

    def get(self, key: ObjectKey) -> Fill | None:
        return self._fills.get(key)

    def add(self, fill: Fill) -> None:
        self._fills[fill.key] = fill

    def drop(self, fill: Fill) -> None:
        """No new miss joins `fill` (its object is in the store, or was given up)."""
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]
