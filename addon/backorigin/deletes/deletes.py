"""Deletes that stick, as a child addon of BackOrigin (see tombstones.tombstones for where the
tombstones live).

The store authorises: nothing a delete does takes effect before the store has answered it 2xx.
Before a DeleteObject or DeleteObjects of a bucket with Mirror rules goes to the store, room for
its tombstones is taken (an intent, which hides nothing); with no room on the disk the client gets
503 and the store is never asked. Once the store answered 2xx, every key a Mirror rule covers gets
its tombstone, durable before the client has the answer (a DeleteObjects' keys are read from its
body only then, less those the store's answer lists as errors); anything else withdraws the intent.
A delete of a version (versioned buckets) leaves a tombstone only when the key has no current
object left (the proxy asks the store), and otherwise clears it; a PUT, CopyObject or
CompleteMultipartUpload of the key clears its tombstone.

A delete never waits for a write-back: a fill under way is never stored, write-backs that have not
started are withdrawn (a DeleteObject's were held while it was on its way), and one that was
uploading meanwhile is deleted again in the background once it landed (the worker checks the
tombstones before every attempt, every part and the completion of a multipart upload, so a stuck
one that wakes up lands nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import botocore.exceptions
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from backorigin.context import Context
from backorigin.deletes.bodies import ReadingBody, deleted_objects, read_as_it_passes, refuse_unread
from backorigin.deletes.undoing import Undoing
from backorigin.miss.mirror import Mirror
from backorigin.options import choice, declare, optional_text, read_settings
from backorigin.rules.plan import covered_by_mirror
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectKey, ObjectRef, WriteKind, write_kind
from backorigin.s3.clients import describe_error, shared_s3_client, store_has
from backorigin.s3.reading import plain_key
from backorigin.tombstones.tombstones import (
    SHARED_WRITES,
    Intent,
    NoRoom,
    Tombstones,
    TombstonesError,
    is_tombstoned,
    open_tombstones,
    resolve_pending,
    room_for,
)
from backorigin.tombstones.tombstonesinforce import TombstonesInForce
from backorigin.writeback.upload import remove_if_written_back
from backorigin.writeback.writebacksettings import WriteBackSettings
from backorigin.xmlsafe import ObjectsReader

logger = logging.getLogger(__name__)

DELETES = ("stick", "resurrect")
DELETING_KEY = "backorigin_deleting"  # a DeleteObject's object, held from its request hook to its response hook
_READS = ("GET", "HEAD")
LOGGED_KEYS = 5  # of a DeleteObjects' tombstones, named in its log line (the rest counted)
Refuse = Callable[[http.HTTPFlow, replies.Reply], Awaitable[None]]  # answer a flow whose body is on its way


@dataclass(frozen=True)
class DeleteSettings:
    deletes: str = choice(
        "backorigin_deletes", "stick", DELETES,
        "'stick': a DeleteObject/DeleteObjects through the proxy leaves a tombstone, so the key is never mirrored "
        "again until a PUT, CopyObject or CompleteMultipartUpload of it; 'resurrect': OSS's behaviour (the next "
        "GET mirrors it back).")
    tombstones: str | None = optional_text(
        "backorigin_tombstones",
        "Where tombstones live: default a folder beside the spool (one proxy); s3://BUCKET/PREFIX/ keeps them "
        "in the store (written create-only), shared by every proxy in front of it.")


class Deletes:
    def __init__(self, context: Context, mirror: Mirror, in_force: TombstonesInForce, refuse: Refuse) -> None:
        """`mirror`: its fills and write-backs are forgotten when their object is deleted; `in_force`:
        the tombstones this child opens and writes (backorigin.parts); `refuse(flow, reply)`: answer
        a request whose body is still arriving without asking the store."""
        self.context = context
        self.mirror = mirror
        self.in_force = in_force
        self.refuse = refuse
        self.store: str | None = None
        self._intents: dict[str, Intent] = {}  # by flow id: deletes on their way to the store
        self._background: set[asyncio.Task[None]] = set()
        self.undoing = Undoing()  # keys whose write-backs the proxy undoes after a delete (deletes.undoing)

    @property
    def stick(self) -> bool:
        return self.in_force.stick

    def load(self, loader: Loader) -> None:
        declare(WriteBackSettings, loader)  # backorigin_spool_fsync: the tombstones beside the spool follow it
        declare(DeleteSettings, loader)

    def configure(self, updated: set[str]) -> None:
        settings = read_settings(DeleteSettings, ctx.options)
        stick = settings.deletes == "stick"
        stores = self.context.names.stores
        self.store = store = stores[0].address if len(stores) == 1 else None  # tombstones in the store: the one store's
        writeback = self.mirror.writeback
        spool = writeback.spool.directory
        tombstones = self.in_force.tombstones if self.in_force.opened else None
        if tombstones is None or {"backorigin_tombstones", "backorigin_spool_dir", "confdir"} & updated:
            try:
                tombstones = open_tombstones(settings.tombstones, spool / "tombstones", store,
                                             fsync=read_settings(WriteBackSettings, ctx.options).fsync)
            except TombstonesError as e:
                raise exceptions.OptionsError(f"backorigin_tombstones: {e}") from None
            assert tombstones is not None  # there is a default folder
        self.in_force.use(tombstones, settings.tombstones or str(spool / "tombstones"), stick)
        # the write-back worker checks tombstones before every upload, where they live
        writeback.tombstones = (settings.tombstones, store) if stick else None
        writeback.process.refresh()  # a change at run time reaches the worker

    def running(self) -> None:
        """Deletes a crash left on their way are resolved in the background (tombstones.tombstones.resolve_pending)."""
        self._in_background(resolve_pending(self.in_force.tombstones, self.store))

    async def is_deleted(self, ref: ObjectRef) -> bool:
        """Whether a miss of the key must not mirror: it was deleted through the proxy."""
        if not self.stick or not covered_by_mirror(self.context.rulebook, ref):
            return False
        return await is_tombstoned(self.in_force.tombstones, ref.bucket, ref.key)

    # hooks -------------------------------------------------------------------------------------

    def on_requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A DeleteObjects body passes on to the store as it arrives, read on the way (bounded,
        without DTDs or entities, chunk by chunk: `ReadingBody`); its keys count only once the
        store has said yes. Room for its tombstones is taken first."""
        if flow.request.method != "POST" or not self.stick or not self.context.acts(flow):
            return None
        if write_kind(flow.request) is not WriteKind.DELETE_MANY:
            return None
        bucket = self.context.bucket(flow)
        if bucket is None or not any(rule.Redirect.is_mirror for rule in self.context.rulebook.rules_for(bucket)):
            return None
        flow.request.stream = ReadingBody(ObjectsReader(frozenset({"Object"})), guard=True)
        return self._take_room(flow, bucket, None)

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A DeleteObject on its way to the store: room for its tombstone, and its write-backs held."""
        if flow.request.method != "DELETE" or not self.stick or not self.context.acts(flow) or flow.response is not None:
            return None
        refs = self._deleted_by(flow, [])
        if not refs:
            return None
        (ref, versioned), = refs
        endpoint = self.context.endpoint(flow.request)
        if endpoint is None:  # set aside (s3.reading): refs came from the same reading, so never here
            return None
        self.mirror.writeback.hold((endpoint, ref.bucket, ref.key))
        flow.metadata[DELETING_KEY] = [[endpoint, ref.bucket, ref.key, versioned]]
        return self._take_room(flow, ref.bucket, ref.key)

    async def _take_room(self, flow: http.HTTPFlow, bucket: str, key: str | None) -> None:
        length = flow.request.headers.get("content-length", "")
        room = room_for(bucket, key, int(length) if length.isascii() and length.isdigit() else None)
        try:
            self._intents[flow.id] = await asyncio.to_thread(self.in_force.tombstones.reserve, bucket, key, room)
        except NoRoom as e:
            logger.error("%s %s refused, the store not asked: %s", flow.request.method, flow.request.pretty_url, e)
            refused = replies.s3_error(503, "ServiceUnavailable", "The proxy has no room on its disk for this delete's "
                                       "tombstones; nothing was deleted. Retry later.", ObjectRef(bucket, key or ""),
                                       [("retry-after", "5")])
            self.on_error(flow)  # no intent, and the write-backs held for it go on
            if flow.request.method == "DELETE":
                flow.response = replies.to_response(flow.request, refused)
            else:
                flow.request.stream = True
                await self.refuse(flow, refused)

    def on_response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The store's answer to a write: the keys a delete deleted get tombstones, lose their fill
        and write-backs; the others' write-backs are released. A PUT, copy or completed multipart
        upload of a key clears its tombstone. Reads cost no coroutine."""
        if flow.request.method in _READS or not self.context.acts(flow) or flow.response is None:
            return None
        refuse_unread(flow, self.context.bucket(flow) or "")
        if 200 <= flow.response.status_code < 300:
            self._forget_origin_404s(flow)
        return self._answered(flow, flow.response) if self.stick else None

    def _forget_origin_404s(self, flow: http.HTTPFlow) -> None:
        """A key written or deleted through the proxy asks the origin afresh on its next miss."""
        if write_kind(flow.request) is WriteKind.DELETE_MANY:
            keys = [(ref.bucket, ref.key) for ref, _ in self._deleted_by(flow, deleted_objects(flow) or [])]
        else:
            keys = [(ref.bucket, ref.key)] if write_kind(flow.request) is not None and (ref := self.context.object(flow)) else []
        for bucket, key in keys:
            self.mirror.guard.not_found.forget(bucket, key)

    def on_responseheaders(self, flow: http.HTTPFlow) -> None:
        """The answer to a DeleteObjects is read as it passes (its <Deleted> and <Error> keys). It
        goes out chunked, so that the client has all of it only after the response hook has written
        the tombstones (mitmproxy sends the last chunk after that hook), whatever its size."""
        response = flow.response
        if flow.request.method == "POST" and response is not None and flow.id in self._intents:
            read_as_it_passes(flow, response)

    async def _answered(self, flow: http.HTTPFlow, response: http.Response) -> None:
        intent = self._intents.pop(flow.id, None)
        held = [(str(e), str(b), str(k)) for e, b, k, _ in flow.metadata.pop(DELETING_KEY, [])]
        succeeded = 200 <= response.status_code < 300
        kind = write_kind(flow.request)
        try:
            if intent is not None:
                await self._settle(flow, intent, held if succeeded else [])
        finally:
            self._release(held)
        written = self.context.object(flow) if succeeded and kind is WriteKind.CREATE else None
        if written and self.undoing and (endpoint := self.context.endpoint(flow.request)) is not None:
            self.undoing.written((endpoint, written.bucket, written.key))
        if written and await self.is_deleted(written):
            await asyncio.to_thread(self.in_force.tombstones.discard, written.bucket, written.key)
            logger.info("tombstone of s3://%s/%s cleared by a write", written.bucket, written.key)

    async def _settle(self, flow: http.HTTPFlow, intent: Intent, deleted_one: list[ObjectKey]) -> None:
        """The store answered a delete that took room: its tombstones are committed (2xx), durable
        before the client has the answer, or the intent withdrawn. Tombstones that cannot be written
        (the disk failed after all) make the answer 503, or break off a DeleteObjects' answer."""
        response = flow.response
        assert response is not None
        deleted: list[ObjectKey] = deleted_one
        if 200 <= response.status_code < 300 and write_kind(flow.request) is WriteKind.DELETE_MANY:
            endpoint = self.context.endpoint(flow.request)
            found = self._deleted_by(flow, deleted_objects(flow) or []) if endpoint is not None else []
            deleted = [(endpoint, ref.bucket, ref.key) for ref, _ in found if endpoint is not None]
            versioned = {ref.key for ref, only_version in found if only_version}
        else:
            versioned = {ref.key for ref, only_version in self._deleted_by(flow, []) if only_version} if deleted else set()
        gone = [key for key in deleted if key[2] not in versioned or not await self._still_there(key)]
        if not gone:
            await asyncio.to_thread(self.in_force.tombstones.withdraw, intent)
            return
        try:
            await asyncio.to_thread(self.in_force.tombstones.commit, intent, [key for _, _, key in gone])
        except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            logger.error("%s %s: the store deleted, but the tombstones could not be written: %s; the client is told "
                         "to retry", flow.request.method, flow.request.pretty_url, e)
            if response.stream:
                flow.kill()  # its headers went out: the answer breaks off, it never reads as complete
            else:
                flow.response = replies.to_response(flow.request, replies.s3_error(
                    503, "ServiceUnavailable", "The delete could not be made to stick; retry it.",
                    ObjectRef(intent.bucket, intent.key or ""), [("retry-after", "5")]))
            return
        shown = ", ".join(f"s3://{bucket}/{key}" for _, bucket, key in gone[:LOGGED_KEYS])
        logger.info("tombstone(s) for %s%s", shown, f" and {len(gone) - LOGGED_KEYS} more ({len(gone)} keys)"
                    if len(gone) > LOGGED_KEYS else "")
        self._in_background(self.undoing.during(gone, overtake(self.mirror, self.in_force.tombstones, gone,
                                                               flow.request.timestamp_start)))

    def on_error(self, flow: http.HTTPFlow) -> None:
        """No answer from the store (the client or the store went away): the delete did nothing we know of."""
        self._release([(str(e), str(b), str(k)) for e, b, k, _ in flow.metadata.pop(DELETING_KEY, [])])
        intent = self._intents.pop(flow.id, None)
        if intent is not None:
            self._in_background(asyncio.to_thread(self.in_force.tombstones.withdraw, intent))

    # after a delete ------------------------------------------------------------------------------

    def done(self) -> Awaitable[object]:
        """Shutdown: what runs in the background (a withdrawal waiting for a stuck upload) stops."""
        for task in list(self._background):
            task.cancel()
        return asyncio.gather(*self._background, return_exceptions=True)

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _still_there(self, key: ObjectKey) -> bool:
        """After a version's delete: whether the key still has a current object in the store (then any
        tombstone it had goes: the store answers its GETs). A store that cannot be asked counts as
        gone: a tombstone too many hides a key, one too few lets the origin's copy come back."""
        endpoint, bucket, name = key
        try:
            there = await asyncio.to_thread(store_has, shared_s3_client(endpoint), bucket, name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            logger.warning("s3://%s/%s: a version was deleted and the store cannot say what is left (%s): tombstone",
                           bucket, name, describe_error(e))
            return False
        if there and await is_tombstoned(self.in_force.tombstones, bucket, name):
            await asyncio.to_thread(self.in_force.tombstones.discard, bucket, name)
            logger.info("tombstone of s3://%s/%s cleared: a version's delete left it in the store", bucket, name)
        return there

    def _release(self, keys: list[ObjectKey]) -> None:
        writeback = self.mirror.writeback
        for key in keys:
            writeback.release(key)

    def _deleted_by(self, flow: http.HTTPFlow, objects: list[tuple[str, str | None]]) -> list[tuple[ObjectRef, bool]]:
        """The objects under Mirror rules that a DeleteObject, or the DeleteObjects of `objects`,
        deletes, each with whether only a version of it is deleted (a key named with and without a
        version: not)."""
        kind = write_kind(flow.request)
        bucket: str | None
        if kind in (WriteKind.DELETE, WriteKind.DELETE_VERSION):
            ref = self.context.object(flow)
            bucket, found = (ref.bucket, [(ref.key, kind is WriteKind.DELETE_VERSION)]) if ref else (None, [])
        elif kind is WriteKind.DELETE_MANY:
            bucket = self.context.bucket(flow)
            found = [(key, version is not None) for key, version in objects if plain_key(key)]  # keys stores read alike
        else:
            return []
        if bucket is None:
            return []
        versioned: dict[str, bool] = {}
        for key, of_version in found:
            versioned[key] = versioned.get(key, True) and of_version
        refs = [(ObjectRef(bucket, key), only_version) for key, only_version in versioned.items()]
        return [(ref, only_version) for ref, only_version in refs if covered_by_mirror(self.context.rulebook, ref)]


def overtake(mirror: Mirror, tombstones: Tombstones, keys: list[ObjectKey], since: float) -> Awaitable[None]:
    """The deleted keys' fills are never stored and their write-backs are withdrawn, now, before
    the client has its answer (told later, the worker may start them meanwhile); one that landed
    since the delete went out (it was uploading) is deleted again while its tombstone stands, in
    the awaitable returned, run in the background: no client waits for an upload."""
    return _delete_again(keys, [mirror.forget(key, since) for key in keys], tombstones)


async def _delete_again(keys: list[ObjectKey], withdrawals: list[Awaitable[bool]], tombstones: Tombstones) -> None:
    landed = await asyncio.gather(*withdrawals)
    others = []
    for (endpoint, bucket, key), stored in zip(keys, landed, strict=True):
        if stored and await is_tombstoned(tombstones, bucket, key):
            logger.info("s3://%s/%s was written back while its delete was on its way: deleting it again", bucket, key)
            try:
                await asyncio.to_thread(shared_s3_client(endpoint).delete_object, Bucket=bucket, Key=key)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                logger.error("s3://%s/%s: could not delete the write-back that overtook its delete: %s", bucket, key,
                             describe_error(e))
        elif tombstones.blocking:
            others.append((endpoint, bucket, key))
    if others:
        await _delete_other_proxies_write_backs(others)


async def _delete_other_proxies_write_backs(keys: list[ObjectKey]) -> None:
    """Tombstones in the store are shared by a fleet, and written once the store has deleted: in
    between, another proxy may have missed a key, found no tombstone, and written it back (its
    worker looked before the tombstone was there). Now that they are written, a write-back found
    is removed; one that lands later is removed by its own worker, which looks again after storing."""
    def remove(key: ObjectKey) -> None:
        endpoint, bucket, name = key
        try:
            if remove_if_written_back(shared_s3_client(endpoint), bucket, name):
                logger.info("s3://%s/%s was written back by another proxy while its delete was on its way: deleted "
                            "again", bucket, name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            logger.error("s3://%s/%s: could not check for another proxy's write-back after its delete: %s", bucket,
                         name, describe_error(e))

    def remove_all() -> None:
        with ThreadPoolExecutor(SHARED_WRITES) as pool:
            list(pool.map(remove, keys))

    await asyncio.to_thread(remove_all)
