"""XML that others wrote, read safely: clients' DeleteObjects bodies and the store's answers to
them, origins' listings, OSS configurations.

Every document goes through defusedxml's parser, which refuses a DTD, entity declarations and
external references (so nothing expands, and nothing is fetched), and through a size bound;
bodies are fed as their bytes arrive, so the work is linear in what was received and spread over
it. The standard library's expat expands internal entities up to a hundred times the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

KiB = 1024
MiB = 1024 * KiB
# S3 takes at most 1,000 keys in one DeleteObjects, each of at most 1,024 bytes; XML escaping can
# make a key up to six times longer. A body past this is not a delete the store accepts.
DELETE_OBJECTS_LIMIT = 8 * MiB
MOST_DELETED_KEYS = 1000
KEY_TEXT_LIMIT = 4 * KiB  # characters of one <Key> or <VersionId> kept (S3: 1,024 bytes)
# A ListObjectsV2 page: at most 1,000 keys (and common prefixes) of at most 1,024 bytes, which URL
# encoding can make three times longer, with their ETags, sizes and dates.
LISTING_LIMIT = 8 * MiB


class XMLRefused(ValueError):
    """A document that is not read: too large, not well-formed, or with a DTD or entities."""


def parse(text: str | bytes, limit: int) -> Element:
    """The root of a whole document of at most `limit` bytes (a str counted as its UTF-8)."""
    # a str's UTF-8 is at least as long as the str: it is encoded only once that is within the limit
    if len(text) > limit or (isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > limit):
        raise XMLRefused(f"larger than {limit} bytes")
    try:
        return defusedxml.ElementTree.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as e:
        raise XMLRefused(f"DOCTYPE and ENTITY declarations are refused ({e})") from None
    except ParseError as e:
        raise XMLRefused(f"not well-formed XML: {e}") from None


class _PrologEnds(Exception):
    pass


class _Prolog:
    """A parser target that stops at the root element: what comes before it is the prolog."""

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        raise _PrologEnds

    def close(self) -> None:
        return None


def refuse_dtd(body: bytes, limit: int = LISTING_LIMIT) -> None:
    """XMLRefused when a body is larger than `limit` or declares a DTD before its root element.
    The prolog alone is parsed (the rest is left to the caller's parser), so the cost stays in
    proportion to the bytes before the root."""
    if len(body) > limit:
        raise XMLRefused(f"larger than {limit} bytes")
    parser = defusedxml.ElementTree.DefusedXMLParser(target=_Prolog(), forbid_dtd=True)
    try:
        for start in range(0, len(body), 64 * KiB):
            parser.feed(body[start:start + 64 * KiB])
    except _PrologEnds:
        return
    except DefusedXmlException as e:
        raise XMLRefused(f"DOCTYPE and ENTITY declarations are refused ({e})") from None
    except ParseError:
        return  # not XML at all: the caller's parser says so


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class ObjectsReader:
    """The <Key> and <VersionId> of every <Object> (a DeleteObjects request) or <Deleted> and
    <Error> (its answer), fed chunk by chunk as the body passes. Reads at most `limit` bytes and
    `most` objects; past either, or on anything but well-formed XML without a DTD, `failed` says
    why and nothing more is read."""

    def __init__(self, elements: frozenset[str], limit: int = DELETE_OBJECTS_LIMIT, most: int = MOST_DELETED_KEYS) -> None:
        self.elements = elements
        self.limit = limit
        self.most = most
        self.objects: list[tuple[str, str, str | None]] = []  # (element, Key, VersionId or None)
        self.failed = ""
        self.size = 0
        self._parser = defusedxml.ElementTree.DefusedXMLParser(target=self, forbid_dtd=True)
        self._fields: dict[str, str] | None = None  # the object being read
        self._field: str | None = None  # the field being read (Key, VersionId)
        self._text: list[str] = []
        self._length = 0

    def feed(self, chunk: bytes) -> None:
        if self.failed or not chunk:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self._fail(f"larger than {self.limit} bytes")
            return
        self._run(self._parser.feed, chunk)

    def finish(self) -> None:
        """The body is over."""
        if not self.failed:
            self._run(self._parser.close)

    def _run(self, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except DefusedXmlException as e:
            self._fail(f"DOCTYPE and ENTITY declarations are refused ({e})")
        except ParseError as e:
            self._fail(f"not well-formed XML: {e}")
        except XMLRefused as e:
            self._fail(str(e))

    def _fail(self, why: str) -> None:
        self.failed = why
        self.objects = []
        self._parser = None  # type: ignore[assignment]  # nothing more is read

    def keys(self, *elements: str) -> list[str]:
        return [key for element, key, _ in self.objects if element in elements]

    # the parser's target -----------------------------------------------------------------------

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        name = _local(tag)
        if self._fields is None:
            if name in self.elements:
                self._fields = {"": name}
        elif name in ("Key", "VersionId"):
            self._field, self._text, self._length = name, [], 0

    def data(self, text: str) -> None:
        if self._field is not None:
            self._length += len(text)
            if self._length > KEY_TEXT_LIMIT:
                raise XMLRefused(f"a <{self._field}> longer than {KEY_TEXT_LIMIT} characters")
            self._text.append(text)

    def end(self, tag: str) -> None:
        name = _local(tag)
        if self._fields is None:
            return
        if self._field is not None and name == self._field:
            self._fields[name] = "".join(self._text)
            self._field = None
        elif name == self._fields[""]:
            fields, self._fields = self._fields, None
            if "Key" in fields:
                if len(self.objects) >= self.most:
                    raise XMLRefused(f"more than {self.most} objects")
                self.objects.append((fields[""], fields["Key"], fields.get("VersionId")))

    def close(self) -> None:
        """The parser's end of the document (the body's is `finish`)."""
        return None
