"""Write-through as a child addon of BackOrigin: a bucket entry's "WriteThrough": true makes every
write the store accepts through the proxy (PutObject, CopyObject, CompleteMultipartUpload,
DeleteObject, a version's delete, DeleteObjects) reach the bucket's S3 origin too, so that a
migration can be rolled back (docs/write-through.md).

Only once the store answered 2xx, and only for the store, bucket and keys it acted on (the
reading of the request, Context; the keys a DeleteObjects did not refuse), the write is journaled
(writethrough.journal), synced to the disk, before its answer goes out; the write-through worker
then makes each key's origin copy what the store holds. A write that cannot be journaled (a full
disk) is answered 503, so that the client retries it, rather than acknowledged unpromised.

It comes after the deletes addon in BackOrigin.addons: mitmproxy runs one child's response hook to
its end before the next one's, so a delete's tombstone is written, and a write-back that landed
meanwhile deleted again, before the write is journaled and the worker reads the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from backorigin.context import Context
from backorigin.decision import printable
from backorigin.deletes.bodies import ReadingBody, deleted_objects, read_as_it_passes
from backorigin.miss.mirror import is_utf8
from backorigin.options import declare, read_settings
from backorigin.rules import writethrough as rules
from backorigin.rules.model import RuleBook
from backorigin.rules.rulesfile import CHECK_EVERY
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectRef, WriteKind, write_kind
from backorigin.s3.reading import plain_key
from backorigin.writeback.supervisor import WriteBackSupervisor
from backorigin.writeback.writebacksettings import WriteBackSettings
from backorigin.writethrough.journal import Change
from backorigin.writethrough.supervisor import WriteThroughSupervisor
from backorigin.writethrough.writethroughsettings import WriteThroughSettings
from backorigin.xmlsafe import ObjectsReader

logger = logging.getLogger(__name__)
_READS = ("GET", "HEAD")


class WriteThrough:
    def __init__(self, context: Context, writeback: WriteBackSupervisor,
                 synced: Callable[[float], None] = lambda seconds: None) -> None:
        """`writeback`: the journal lives in its spool, which this proxy holds; `synced(seconds)`:
        told of each entry's time from its write's answer to the origin's copy (ui.metrics)."""
        self.context = context
        self.writeback = writeback
        self.synced = synced
        self.supervisor: WriteThroughSupervisor | None = None
        self._book: RuleBook | None = None  # the rules whose secrets the worker has
        self._watcher: asyncio.Task[None] | None = None

    def load(self, loader: Loader) -> None:
        declare(WriteThroughSettings, loader)
        declare(WriteBackSettings, loader)  # backorigin_shutdown_timeout: the write-through drains within it too

    def configure(self, updated: set[str]) -> None:
        settings = read_settings(WriteThroughSettings, ctx.options)
        if self.supervisor is None:
            self.supervisor = WriteThroughSupervisor(self.writeback.spool.directory / "writethrough", synced=self.synced)
            self.supervisor.track_journal()
        self.supervisor.workers = settings.workers  # read when a worker starts
        self.supervisor.process.refresh()  # a change at run time reaches the worker
        self.supervisor.journal.fsync = settings.fsync

    def running(self) -> None:
        """Resume what a previous run left journaled; keep the worker's secrets those of the rules in force."""
        assert self.supervisor is not None
        self._pass_secrets()
        self.supervisor.resume()
        self._watcher = asyncio.ensure_future(self._watch_rules())

    def done(self) -> Awaitable[None] | None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.supervisor is None:
            return None
        return asyncio.ensure_future(self.supervisor.drain(read_settings(WriteBackSettings, ctx.options).shutdown_timeout))

    def writing(self, flow: http.HTTPFlow, ref: ObjectRef) -> bool:
        """Whether the key has a write the origin has not had yet: its origin copy is stale, so a
        miss of it must not be mirrored back (a delete would be undone)."""
        endpoint = self.context.endpoint(flow.request)
        return self.supervisor is not None and endpoint is not None and self.supervisor.writing((endpoint, ref.bucket, ref.key))

    # hooks -------------------------------------------------------------------------------------

    def on_requestheaders(self, flow: http.HTTPFlow) -> None:
        """A DeleteObjects body is read as it passes (its keys), unless the deletes addon reads it already."""
        if self._deletes_many(flow) and not isinstance(flow.request.stream, ReadingBody):
            flow.request.stream = ReadingBody(ObjectsReader(frozenset({"Object"})), guard=True)

    def on_responseheaders(self, flow: http.HTTPFlow) -> None:
        """A DeleteObjects answer is read as it passes (its refused keys), and its end waits for the journal."""
        if flow.response is not None and isinstance(flow.request.stream, ReadingBody) and self._deletes_many(flow):
            read_as_it_passes(flow, flow.response)

    def on_response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A write the store accepted, of a bucket with WriteThrough: journaled before its answer goes out."""
        response = flow.response
        if flow.request.method in _READS or response is None or not 200 <= response.status_code < 300:
            return None
        kind = write_kind(flow.request)
        if kind is None or not self.context.acts(flow):
            return None
        changes = self._changes(flow, kind)
        return self._record(flow, kind, changes) if changes else None

    # the pieces --------------------------------------------------------------------------------

    def _deletes_many(self, flow: http.HTTPFlow) -> bool:
        if flow.request.method != "POST" or not self.context.acts(flow) or write_kind(flow.request) is not WriteKind.DELETE_MANY:
            return False
        bucket = self.context.bucket(flow)
        return bucket is not None and self.context.rulebook.writes_through(bucket)

    def _changes(self, flow: http.HTTPFlow, kind: WriteKind) -> list[Change]:
        """The keys the store's 2xx says the write changed, each with its origin copy."""
        book = self.context.rulebook
        if kind is WriteKind.DELETE_MANY:
            bucket = self.context.bucket(flow)
            if bucket is None or not book.writes_through(bucket):
                return []
            refs = [ObjectRef(bucket, key) for key in self._deleted_keys(flow, bucket)]
        else:
            ref = self.context.object(flow)
            refs = [ref] if ref is not None else []
        endpoint = self.context.endpoint(flow.request)
        if endpoint is None:  # set aside (s3.reading): not a write the proxy can place
            return []
        for ref in [ref for ref in refs if not is_utf8(ref.key)]:  # as a miss is not stored: S3 keys are UTF-8 text
            logger.warning("write-through: s3://%s/%s is left out: the key is not UTF-8 text, which S3 keys are (the "
                           "origin does not get this write)", ref.bucket, printable(ref.key))
            if self.supervisor is not None:
                self.supervisor.outcomes["not_utf8"] += 1
        return [Change(endpoint, ref.bucket, ref.key, copy) for ref in refs
                if is_utf8(ref.key) and (copy := rules.origin_copy(book, ref)) is not None]

    def _deleted_keys(self, flow: http.HTTPFlow, bucket: str) -> list[str]:
        """The keys a DeleteObjects named, less those its answer lists as <Error> (read as they
        passed: deletes.deletes.deleted_objects)."""
        deleted = deleted_objects(flow)
        if deleted is None:
            logger.error("write-through: a DeleteObjects of bucket %s could not be read: the keys it deleted do not "
                         "reach the origin; backorigin verify --check origin finds them", bucket)
            return []
        return [key for key in dict.fromkeys(key for key, _ in deleted) if plain_key(key)]  # keys stores read alike (s3.reading)

    async def _record(self, flow: http.HTTPFlow, kind: WriteKind, changes: list[Change]) -> None:
        assert self.supervisor is not None
        self._pass_secrets()
        try:
            await self.supervisor.record(kind.value, changes)
        except Exception as e:  # OSError (a full disk), or anything else: not acknowledged unpromised
            logger.error("write-through: cannot journal %s of %s (%s: %s): answered 503 for the client to retry; the "
                         "store may have it and the origin not (backorigin verify --check origin)", kind.value,
                         ", ".join(change.where for change in changes), type(e).__name__, e)
            self._refuse(flow, changes[0])

    def _refuse(self, flow: http.HTTPFlow, change: Change) -> None:
        """503, which S3 clients retry; an answer whose headers have gone is broken off instead."""
        if flow.response is not None and flow.response.stream:
            flow.kill()
            return
        reply = replies.s3_error(503, "ServiceUnavailable", "The write could not be recorded for the origin; retry it.",
                                 ObjectRef(change.bucket, change.key), [("retry-after", "1")])
        flow.response = replies.to_response(flow.request, reply)

    def _pass_secrets(self) -> None:
        """The worker signs with the MirrorAuth of the rules in force (they may be reloaded)."""
        book = self.context.rulebook
        if book is not self._book and self.supervisor is not None:
            self._book = book
            self.supervisor.credentials(rules.secrets(book))

    async def _watch_rules(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            self._pass_secrets()
