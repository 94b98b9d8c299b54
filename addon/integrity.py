"""Checks on an origin body as it arrives: length, Content-MD5, an MD5 ETag, gzip framing.

Fed chunk by chunk, so a body streamed to disk is checked without being held in memory.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass, field

_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
# ASCII digits only (str.isdigit() also accepts '²'), and at most 18 of them: no length or
# number in a rule comes near that, and int() refuses strings past 4300 digits anyway.
_DECIMAL = re.compile(r"^\s*([0-9]{1,18})\s*$")


def decimal(text: str | None) -> int | None:
    """A whole number written in at most 18 ASCII digits (a Content-Length), else None."""
    match = _DECIMAL.match(text or "")
    return int(match.group(1)) if match else None
_INFLATE_STEP = 1024 * 1024  # bound on what one gzip check step inflates into memory


@dataclass
class BodyCheck:
    content_length: str | None = None
    content_md5: str | None = None
    etag: str | None = None
    gzip: bool = False
    size: int = 0
    _md5: "hashlib._Hash" = field(default_factory=hashlib.md5)
    _inflater: "zlib._Decompress | None" = None
    _gzip_error: str = ""

    @classmethod
    def for_headers(cls, headers) -> BodyCheck:
        encoding = (headers.get("content-encoding") or "").strip().lower()
        check = cls(headers.get("content-length"), headers.get("content-md5"), headers.get("etag"), encoding == "gzip")
        if check.gzip:
            check._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return check

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._md5.update(chunk)
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
        return base64.b64encode(self._md5.digest()).decode()

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
        match = _MD5_ETAG.match((self.etag or "").strip())
        if match and match.group(1).lower() != self._md5.hexdigest():
            return f"ETag {self.etag} is an MD5 that does not match the body ({self._md5.hexdigest()})"
        return ""
