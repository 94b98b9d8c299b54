"""What a GET or HEAD of a known object answers, as S3 decides it: conditional headers
first (If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, in RFC 9110's
order, which is S3's), then Range (a single range; If-Range may void it).

Pure: request headers and the object's validators in, an `Answer` plan out. The miss path
uses it for objects the store does not hold yet, so they answer as they will once stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Validators:
    etag: str | None  # quoted; None while not yet known (a large object still arriving)
    last_modified: str  # an HTTP date
    # An S3 origin's multipart ETag the store cannot reproduce (integrity.part_layout): the same
    # bytes, as a listing of the origin showed them, so a client's If-Match with it still holds.
    origin_etag: str | None = None


@dataclass(frozen=True)
class Answer:
    status: int  # 200, 206, 304, 412, 416
    first: int = 0  # the bytes to send: first..last inclusive (none when last < first)
    last: int = -1
    size: int = 0

    @property
    def content_range(self) -> str | None:
        if self.status == 206:
            return f"bytes {self.first}-{self.last}/{self.size}"
        if self.status == 416:
            return f"bytes */{self.size}"
        return None

    @property
    def length(self) -> int:
        return max(self.last - self.first + 1, 0)


class RangeNotSatisfiable(ValueError):
    pass


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single byte range; None when the header does not apply
    (absent, malformed, several ranges: S3 answers those with the whole object)."""
    match = _RANGE.match(header.strip())
    if not match or match.group(0) == "bytes=-":
        return None
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        if int(last) == 0:
            raise RangeNotSatisfiable(header)
        return max(size - int(last), 0), size - 1
    if int(first) >= size:
        raise RangeNotSatisfiable(header)
    end = min(int(last), size - 1) if last else size - 1
    return (int(first), end) if int(first) <= end else None


def needs_etag(header: Callable[[str], str | None]) -> bool:
    """Whether the answer depends on the ETag (so it must wait until the ETag is known)."""
    return any(header(name) for name in ("if-match", "if-none-match", "if-range"))


def plan(header: Callable[[str], str | None], size: int, validators: Validators) -> Answer:
    """The answer to a GET (or HEAD: the same status and headers) of a `size`-byte object."""
    etags, modified = (validators.etag, validators.origin_etag), _date(validators.last_modified)
    if_match = header("if-match")
    if if_match is not None:
        if not _etag_matches(if_match, *etags):
            return Answer(412, size=size)
    elif (since := _date(header("if-unmodified-since"))) and modified and modified > since:
        return Answer(412, size=size)
    if_none_match = header("if-none-match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, *etags):
            return Answer(304, size=size)
    elif (since := _date(header("if-modified-since"))) and modified and modified <= since:
        return Answer(304, size=size)
    whole = Answer(200, 0, size - 1, size)
    range_header = header("range")
    if not range_header or not _range_still_applies(header("if-range"), etags, modified):
        return whole
    try:
        wanted = byte_range(range_header, size)
    except RangeNotSatisfiable:
        return Answer(416, size=size)
    return Answer(206, wanted[0], wanted[1], size) if wanted else whole


def _etag_matches(header: str, *etags: str | None) -> bool:
    """Strong comparison against a list of entity tags, or * (any existing object)."""
    tags = [t.strip() for t in header.split(",")]
    if "*" in tags:
        return True
    bare = {e.strip('"') for e in etags if e and e.strip('"')}
    return any(t.removeprefix("W/").strip('"') in bare for t in tags)


def _range_still_applies(if_range: str | None, etags: tuple[str | None, ...], modified: datetime | None) -> bool:
    if not if_range:
        return True
    if if_range.strip().startswith(('"', "W/")):
        return _etag_matches(if_range, *etags)
    since = _date(if_range)
    return bool(since and modified and modified <= since)


def _date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
