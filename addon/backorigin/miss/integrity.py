"""Checks on an origin body as it arrives: length, Content-MD5, an MD5 ETag, gzip framing.

Fed chunk by chunk, so a body streamed to disk is checked without being held in memory.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backorigin.limits import PART_SIZE

_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_MULTIPART_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})-([0-9]{1,5})"?$')
SINGLE_PUT_MAX = 5 * 1024**3  # S3's largest PutObject
MIN_PART = 5 * 1024**2  # S3's smallest part, but the last
# ASCII digits only (str.isdigit() also accepts '²'), and at most 18 of them: no length or
# number in a rule comes near that, and int() refuses strings past 4300 digits anyway.
_DECIMAL = re.compile(r"^\s*([0-9]{1,18})\s*$")


def decimal(text: str | None) -> int | None:
    """A whole number written in at most 18 ASCII digits (a Content-Length), else None."""
    match = _DECIMAL.match(text or "")
    return int(match.group(1)) if match else None


_INFLATE_STEP = 1024 * 1024  # bound on what one gzip check step inflates into memory


def plain_md5(etag: str | None) -> str | None:
    """The hex MD5 an ETag is, when it is a plain one (not a multipart, weak or opaque ETag)."""
    match = _MD5_ETAG.match((etag or "").strip())
    return match.group(1).lower() if match else None


def md5_of_content_md5(value: str | None) -> str | None:
    """The hex MD5 a Content-MD5 header (base64 of the 16 bytes) says, when it is one."""
    try:
        digest = base64.b64decode((value or "").strip(), validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 16 else None


def multipart_parts(etag: str | None) -> int | None:
    """How many parts an S3 multipart ETag ("<md5 of the parts' md5s>-N") says the object has."""
    match = _MULTIPART_ETAG.match((etag or "").strip())
    return int(match.group(2)) if match else None


def part_layout(etag: str | None, size: int | None, first_part: int | None,
                content_md5: str | None = None) -> tuple[int, str | None]:
    """The part size to store a body with so that the store gives it the origin's ETag, and that
    ETag (then announced before the body has arrived): a single PUT for an origin's plain MD5 ETag
    or, without one, its Content-MD5 (up to S3's largest PUT), the origin's own parts for its
    multipart ETag (equal parts of the first part's size, which S3 needs to be at least MIN_PART).
    Otherwise today's layout (single PUT below PART_SIZE, PART_SIZE parts above) and no ETag known
    before the body."""
    md5 = plain_md5(etag) or (None if multipart_parts(etag) else md5_of_content_md5(content_md5))
    if md5 and size is not None and size <= SINGLE_PUT_MAX:
        return SINGLE_PUT_MAX + 1, f'"{md5}"'
    parts = multipart_parts(etag)
    if parts and size and first_part and (parts == 1 or first_part >= MIN_PART) and (parts - 1) * first_part < size <= parts * first_part:
        return first_part, '"' + (etag or "").strip().strip('"') + '"'
    return PART_SIZE, None


@dataclass
class BodyCheck:
    content_length: str | None = None
    content_md5: str | None = None
    etag: str | None = None
    gzip: bool = False
    digests: StoreETag = field(default_factory=lambda: StoreETag(PART_SIZE))
    _inflater: zlib._Decompress | None = None
    _gzip_error: str = ""

    @classmethod
    def for_headers(cls, headers: Mapping[str, str], part_size: int = PART_SIZE) -> BodyCheck:
        """Checks for a body with these headers, its ETag computed as parts of `part_size` (see part_layout)."""
        encoding = (headers.get("content-encoding") or "").strip().lower()
        check = cls(headers.get("content-length"), headers.get("content-md5"), headers.get("etag"), encoding == "gzip",
                    StoreETag(part_size))
        if check.gzip:
            check._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return check

    @property
    def size(self) -> int:
        return self.digests.size

    def update(self, chunk: bytes) -> None:
        self.digests.update(chunk)  # the body is hashed once, here: MD5 checks and the ETag
        if self._inflater is not None and not self._gzip_error:
            try:
                data = chunk
                while data:
                    self._inflater.decompress(data, _INFLATE_STEP)
                    data = self._inflater.unconsumed_tail
            except zlib.error as e:
                self._gzip_error = f"Content-Encoding gzip, but the body is not gzip ({e})"

    @property
    def md5_base64(self) -> str:
        return self.digests.md5_base64

    def failure(self) -> str:
        """Why the answer is unusable (the client gets 424), or ""."""
        declared = self.content_length
        if declared is not None and decimal(declared) != self.size:
            return f"body of {self.size} bytes, Content-Length said {declared}"
        if self._inflater is not None and not self._gzip_error and not self._inflater.eof:
            return "Content-Encoding gzip, but the gzip stream is truncated"
        return self._gzip_error

    def mismatch(self) -> str:
        """Why the bytes must not be stored although the client may see them, or ""."""
        if self.content_md5 and self.content_md5.strip() != self.md5_base64:
            return f"Content-MD5 {self.content_md5} does not match the body ({self.md5_base64})"
        claimed = plain_md5(self.etag)
        actual = self.digests.md5_hex
        if claimed and claimed != actual:
            return f"ETag {self.etag} is an MD5 that does not match the body ({actual})"
        return ""


class StoreETag:
    """The ETag an S3 store will give these bytes when they are uploaded the way the
    write-back uploads them: the hex MD5 of a single PUT below `part_size`, else the MD5 of
    the parts' binary MD5s followed by "-<number of parts>" (the multipart rule)."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.size = 0
        # Until the first part is complete the whole body and the part are the same bytes: one
        # hash serves both, and the whole body's hash branches off (a copy) when the part ends.
        self._part = hashlib.md5()
        self._whole: Any = None
        self._part_filled = 0
        self._part_digests: list[bytes] = []

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._whole is not None:
            self._whole.update(chunk)
        view = memoryview(chunk)
        while view:
            room = self.part_size - self._part_filled
            piece, view = view[:room], view[room:]
            self._part.update(piece)
            self._part_filled += len(piece)
            if self._part_filled == self.part_size:
                if self._whole is None:  # the first part: from here on the whole body is hashed apart
                    self._whole = self._part.copy()
                    self._whole.update(view)
                self._part_digests.append(self._part.digest())
                self._part, self._part_filled = hashlib.md5(), 0

    @property
    def _whole_digest(self) -> Any:
        return self._whole if self._whole is not None else self._part

    @property
    def md5_base64(self) -> str:
        return base64.b64encode(self._whole_digest.digest()).decode()

    @property
    def md5_hex(self) -> str:
        return self._whole_digest.hexdigest()

    def value(self) -> str:
        if self.size < self.part_size:
            return f'"{self.md5_hex}"'
        digests = self._part_digests + ([self._part.digest()] if self._part_filled else [])
        return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'
