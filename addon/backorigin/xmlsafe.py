"""XML that others wrote, read safely: clients' DeleteObjects bodies and the store's answers to
them, origins' listings, OSS configurations.

Every document goes through defusedxml's parser, which refuses a DTD, entity declarations and
external references (so nothing expands, and nothing is fetched), and through a size bound;
bodies are fed as their bytes arrive, so the work is linear in what was received and spread over
it. The standard library's expat expands internal entities up to a hundred times the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree.ElementTree import Element, ParseError
from xml.parsers import expat

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


def go_local_name(name: str) -> str:
    """The local part of an element name as Go's encoding/xml reads it without namespace
    processing (which SeaweedFS, MinIO and most S3 stores use): `p:Key` is `Key` whether or not
    `p` is declared; a name with no prefix, an empty side or more than one colon is whole."""
    prefix, colon, local = name.partition(":")
    return local if colon and prefix and local and ":" not in local else name


def _refuse_declarations(*_: object) -> None:
    raise XMLRefused("DOCTYPE and ENTITY declarations are refused")


_GO_FALSE = {"", "0", "f", "F", "FALSE", "false", "False"}  # strconv.ParseBool's false (its true: 1, t, T, TRUE, true, True)


class ObjectsReader:
    """The <Key> and <VersionId> of every <Object> (a DeleteObjects request) or <Deleted> and
    <Error> (its answer), fed chunk by chunk as the body passes, read as the store reads them
    (Go's encoding/xml): only those elements that are direct children of the root, only a Key or
    VersionId that is a direct child of one (the last when repeated, its own text only), names
    matched by their local part, case-sensitively, whatever their prefix (declared or not); and
    the root's <Quiet>. expat without namespace processing, refusing DTDs and entities. Reads at
    most `limit` bytes and `most` objects; past either, or on anything but well-formed XML,
    `failed` says why and nothing more is read. `root_end`: where the root's end tag starts, in
    bytes from the start of the body, once it has been read."""

    def __init__(self, elements: frozenset[str], limit: int = DELETE_OBJECTS_LIMIT, most: int = MOST_DELETED_KEYS) -> None:
        self.elements = elements
        self.limit = limit
        self.most = most
        self.objects: list[tuple[str, str, str | None]] = []  # (element, Key, VersionId or None)
        self.quiet = False  # the root's <Quiet>, as Go's strconv.ParseBool reads it (unreadable: True)
        self.failed = ""
        self.size = 0
        self.root_end: int | None = None
        self._parser = expat.ParserCreate()  # no namespace processing: an undeclared prefix is a name
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._parser.CharacterDataHandler = self._data
        for handler in ("StartDoctypeDeclHandler", "EntityDeclHandler", "UnparsedEntityDeclHandler",
                        "ExternalEntityRefHandler"):
            setattr(self._parser, handler, _refuse_declarations)
        self._depth = 0
        self._fields: dict[str, str] | None = None  # the object being read
        self._field: str | None = None  # the field being read (Key, VersionId, Quiet)
        self._text: list[str] = []
        self._length = 0

    def feed(self, chunk: bytes) -> None:
        if self.failed or not chunk:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self._fail(f"larger than {self.limit} bytes")
            return
        self._run(chunk, False)

    def finish(self) -> None:
        """The body is over."""
        if not self.failed:
            self._run(b"", True)

    def _run(self, chunk: bytes, final: bool) -> None:
        try:
            self._parser.Parse(chunk, final)
        except expat.ExpatError as e:
            self._fail(f"not well-formed XML: {expat.ErrorString(e.code)}: line {e.lineno}, column {e.offset}")
        except XMLRefused as e:
            self._fail(str(e))

    def _fail(self, why: str) -> None:
        self.failed = why
        self.objects = []
        self._parser = None  # type: ignore[assignment]  # nothing more is read

    def keys(self, *elements: str) -> list[str]:
        return [key for element, key, _ in self.objects if element in elements]

    # expat's handlers ----------------------------------------------------------------------------

    def _start(self, tag: str, attrib: object) -> None:
        self._depth += 1
        name = go_local_name(tag)
        if self._depth == 2 and name in self.elements:
            self._fields = {"": name}
        elif self._depth == 2 and name == "Quiet" or self._depth == 3 and self._fields is not None and name in ("Key", "VersionId"):
            self._field, self._text, self._length = name, [], 0

    def _data(self, text: str) -> None:
        if self._field is not None and self._depth == (2 if self._field == "Quiet" else 3):  # its own text only
            self._length += len(text)
            if self._length > KEY_TEXT_LIMIT:
                raise XMLRefused(f"a <{self._field}> longer than {KEY_TEXT_LIMIT} characters")
            self._text.append(text)

    def _end(self, tag: str) -> None:
        depth, self._depth = self._depth, self._depth - 1
        if depth == 1:
            self.root_end = self._parser.CurrentByteIndex
        elif self._field is not None and depth == (2 if self._field == "Quiet" else 3):
            field, text, self._field = self._field, "".join(self._text), None
            if self._fields is None:
                self.quiet = text.strip() not in _GO_FALSE  # a <Quiet> Go cannot read: the store refuses the body
            else:
                self._fields[field] = text
        elif depth == 2 and self._fields is not None:
            fields, self._fields = self._fields, None
            if len(self.objects) >= self.most:
                raise XMLRefused(f"more than {self.most} objects")
            if "Key" in fields:
                self.objects.append((fields[""], fields["Key"], fields.get("VersionId")))
