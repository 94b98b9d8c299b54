"""DeleteObjects bodies and answers, read as they pass and as the store reads them: `ReadingBody`
(mitmproxy's stream function, which holds a request body's end until it is read), what the store
deleted (`deleted_objects`), and the refusal of a body the proxy could not read (`refuse_unread`)."""

from __future__ import annotations

import logging

from mitmproxy import http

from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectRef
from backorigin.xmlsafe import ObjectsReader, XMLRefused, parse

logger = logging.getLogger(__name__)

GUARD_HELD = 64 * 1024  # bytes of a DeleteObjects body held back at its end (ReadingBody)


def read_as_it_passes(flow: http.HTTPFlow, response: http.Response) -> None:
    """A DeleteObjects answer read as it passes (its <Deleted> and <Error> keys: `ReadingBody`),
    unless it is already, and sent chunked, so that the client has all of it only once the response
    hook has run: mitmproxy sends the last chunk after that hook, whatever the answer's size. The
    answer to a body the proxy could not read is left whole, for the response hook to explain it
    (`refuse_unread`)."""
    asked = flow.request.stream
    if isinstance(response.stream, ReadingBody) or isinstance(asked, ReadingBody) and asked.reader.failed:
        return
    response.stream = ReadingBody(ObjectsReader(frozenset({"Deleted", "Error"})))
    # chunked only towards an HTTP/1.1 client: an HTTP/2 one (the store's answer is HTTP/1.1 all the
    # same) ends the stream after the response hook anyway, and Transfer-Encoding breaks HTTP/2
    if flow.request.http_version == "HTTP/1.1" and "content-length" in response.headers:
        del response.headers["content-length"]
        response.headers["transfer-encoding"] = "chunked"


def refuse_unread(flow: http.HTTPFlow, bucket: str) -> None:
    """A DeleteObjects body the proxy could not read reached the store spoilt (`ReadingBody`), which
    refused it for what the proxy did to it (a body or digest error): the client learns why, from
    the proxy. Any other refusal (AccessDenied) is the store's own, and passes as it is."""
    asked, response = flow.request.stream, flow.response
    if isinstance(asked, ReadingBody) and asked.reader.failed and response is not None and not response.stream \
            and (response.status_code == 400 or _error_code(response) in _SPOILT_BODY_ERRORS):
        logger.warning("DeleteObjects of %s refused: its body could not be read as the store reads it (%s)",
                       flow.request.pretty_url, asked.reader.failed)
        flow.response = replies.to_response(flow.request, replies.s3_error(
            400, "MalformedXML", f"The proxy could not read this DeleteObjects body as the store would "
            f"({asked.reader.failed}); it did not pass it on whole, and nothing was deleted.",
            ObjectRef(bucket, "")))


_SPOILT_BODY_ERRORS = ("SignatureDoesNotMatch", "XAmzContentSHA256Mismatch")  # 403s a spoilt signed body gets


def _error_code(response: http.Response) -> str:
    try:
        return parse(response.raw_content or b"", 64 * 1024).findtext("Code") or ""
    except XMLRefused:
        return ""


def deleted_objects(flow: http.HTTPFlow) -> list[tuple[str, str | None]] | None:
    """What a DeleteObjects the store answered 2xx deleted, read as it passed (`ReadingBody`): the
    objects it asked for that the store's answer lists as <Deleted> (in quiet mode, which lists
    only errors: those it asked for, less the <Error>s). When its body could not be read (the store
    was given it spoilt and should have refused it), the store's own list of what it deleted. None
    when neither was read."""
    found = _deleted_objects(flow)
    return None if found is None else [(key, version) for key, version in found if key]  # "": no object's name


def _deleted_objects(flow: http.HTTPFlow) -> list[tuple[str, str | None]] | None:
    asked, response = flow.request.stream, flow.response
    if not isinstance(asked, ReadingBody) or response is None:
        return None
    if isinstance(response.stream, ReadingBody):
        answered = response.stream.reader
    else:  # left whole (read_as_it_passes)
        answered = ObjectsReader(frozenset({"Deleted", "Error"}))
        answered.feed(response.raw_content or b"")
        answered.finish()
    if answered.failed:
        return None
    if asked.reader.failed:
        logger.warning("DeleteObjects of %s: its body was not read (%s); the store's list of what it deleted is used",
                       flow.request.pretty_url, asked.reader.failed)
        return [(key, version) for element, key, version in answered.objects if element == "Deleted"]
    if asked.reader.quiet:
        errors = [(key, version) for element, key, version in answered.objects if element == "Error"]
        return not_refused([(key, version) for _, key, version in asked.reader.objects], errors)
    deleted = set(answered.keys("Deleted"))
    return [(key, version) for _, key, version in asked.reader.objects if key in deleted]


def not_refused(asked: list[tuple[str, str | None]], errors: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """A quiet DeleteObjects' entries less those the store refused: each <Error> refuses one entry
    (its key, and its version where it names one), not every entry of its key, so a key asked twice
    and refused once was deleted."""
    entries: dict[str, list[int]] = {}
    for index, (key, _) in enumerate(asked):
        entries.setdefault(key, []).append(index)
    refused: set[int] = set()
    for key, version in errors:
        match = next((i for i in entries.get(key, ()) if i not in refused and version in (None, asked[i][1])), None)
        if match is not None:
            refused.add(match)
    return [entry for index, entry in enumerate(asked) if index not in refused]


class ReadingBody:
    """mitmproxy's stream function for a DeleteObjects body or its answer: each chunk passes on as
    it is, and is fed to `reader` on the way (bounded, linear in the chunk).

    `guard` (a request's body): the store gets the root element's end only once the whole body was
    read, so it cannot act on a body the proxy could not read (the store's XML parser acts once the
    root closes); such a body reaches it, from the chunk where reading failed on, as NUL bytes of
    the same length, which no XML parser takes. What is held is the root's end tag and what
    follows it (whitespace, comments: at most GUARD_HELD bytes)."""

    def __init__(self, reader: ObjectsReader, guard: bool = False) -> None:
        self.reader = reader
        self.guard = guard
        self.finished = False
        self._held = b""

    def __call__(self, chunk: bytes) -> list[bytes]:
        passed = self.reader.size
        if chunk:
            self.reader.feed(chunk)
        elif not self.finished:  # over HTTP/2 mitmproxy calls it with b"" more than once
            self.finished = True
            self.reader.finish()
        if not self.guard:
            return [chunk] if chunk else []
        if not self.reader.failed and self.reader.root_end is not None and len(self._held) + len(chunk) > GUARD_HELD:
            self.reader.failed = f"more than {GUARD_HELD} bytes after its root element"
        if self.reader.failed:
            spoiled, self._held = b"\0" * (len(self._held) + len(chunk)), b""
            return [spoiled] if spoiled else []
        if self.finished:
            held, self._held = self._held + chunk, b""
            return [held] if held else []
        if self.reader.root_end is None:
            return [chunk] if chunk else []
        cut = max(0, self.reader.root_end - passed)  # the root's end is in this chunk, or was held before it
        self._held += chunk[cut:]
        return [chunk[:cut]] if cut else []
