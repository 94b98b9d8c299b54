"""Deletes that stick, as a child addon of BackOrigin (see deletes.tombstones for where the
tombstones live).

The store authorises: nothing a delete does takes effect before the store has answered it 2xx.
A DeleteObject or DeleteObjects through the proxy, for a key a Mirror rule covers, then leaves a
tombstone, a fill under way is never stored and the key's write-backs are withdrawn. A delete of a
version (versioned buckets) does the same when it left the key without a current object (the
proxy asks the store), and otherwise clears the key's tombstone (the store has it again); a PUT,
CopyObject or CompleteMultipartUpload of the key clears its tombstone. While a delete is on its way
nothing is hidden or cancelled: the key's write-backs are held (they do not start), then dropped
(2xx) or released (anything else), so a delete never lands before a write-back of the same key. A
write-back that was already uploading when the delete went out cannot be held: when it stored the
object, the proxy deletes the object again with its own credentials.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Optional

import botocore.exceptions
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from backorigin.context import Context
from backorigin.deletes.tombstones import Tombstones, TombstonesError, is_tombstoned, open_tombstones
from backorigin.miss.addon import Mirroring
from backorigin.options import check_choice
from backorigin.rules.plan import covered_by_mirror
from backorigin.s3.addressing import ObjectRef, WriteKind, keys_in, objects_in, write_kind
from backorigin.s3.clients import describe_error, shared_s3_client, store_has
from backorigin.s3.reading import plain_key
from backorigin.writeback.spool import ObjectKey

logger = logging.getLogger(__name__)

DELETES = ("stick", "resurrect")
DELETING_KEY = "backorigin_deleting"  # a delete's objects, held from its request hook to its response hook
_READS = ("GET", "HEAD")
# A DeleteObjects body is kept up to this size to read its keys: S3 takes 1,000 keys of up to 1,024
# bytes, which XML escaping can make 5 times longer; a larger body is not a delete the store accepts.
DELETE_MANY_LIMIT = 8 * 1024 * 1024


class Deletes:
    def __init__(self, context: Context, mirroring: Mirroring) -> None:
        self.context = context
        self.mirroring = mirroring
        self.stick = True
        self.tombstones: Tombstones  # made in configure: beside the spool, or in the store
        self.location: str | None = None  # where they live (None: deletes do not stick), for the miss ledger

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "backorigin_deletes", str, "stick",
            "'stick': a DeleteObject/DeleteObjects through the proxy leaves a tombstone, so the key is never mirrored "
            "again until a PUT, CopyObject or CompleteMultipartUpload of it; 'resurrect': OSS's behaviour (the next "
            "GET mirrors it back).",
            choices=DELETES,
        )
        loader.add_option(
            "backorigin_tombstones", Optional[str], None,  # type: ignore[arg-type]
            "Where tombstones live: default a folder beside the spool (one proxy); s3://BUCKET/PREFIX/ keeps them "
            "in the store (written create-only), shared by every proxy in front of it.",
        )

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        self.stick = check_choice("backorigin_deletes", options.backorigin_deletes, DELETES) == "stick"
        stores = self.context.names.stores
        store = stores[0].address if len(stores) == 1 else None  # tombstones in the store: the one store's
        spool = self.mirroring.mirror.writeback.spool.directory
        if not hasattr(self, "tombstones") or {"backorigin_tombstones", "backorigin_spool_dir", "confdir"} & updated:
            try:
                found = open_tombstones(options.backorigin_tombstones, spool / "tombstones", store)
            except TombstonesError as e:
                raise exceptions.OptionsError(f"backorigin_tombstones: {e}") from None
            assert found is not None  # there is a default folder
            self.tombstones = found
        self.location = (options.backorigin_tombstones or str(spool / "tombstones")) if self.stick else None
        # the write-back worker checks tombstones before every upload, where they live
        self.mirroring.mirror.writeback.tombstones = (options.backorigin_tombstones, store) if self.stick else None

    async def is_deleted(self, ref: ObjectRef) -> bool:
        """Whether a miss of the key must not mirror: it was deleted through the proxy."""
        if not self.stick or not covered_by_mirror(self.context.rulebook, ref):
            return False
        return await is_tombstoned(self.tombstones, ref.bucket, ref.key)

    def under(self, bucket: str, prefix: str) -> list[str]:
        """Keys of the bucket under `prefix` that a merged listing hides (blocking: run in a thread)."""
        if not self.stick:
            return []
        return [key for b, key in self.tombstones if b == bucket and key.startswith(prefix)]

    # hooks -------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A DeleteObjects body passes through `DeleteManyBody`, which reads its keys as it goes,
        whatever its size and stream_large_bodies."""
        if flow.request.method == "POST" and self.stick and self.context.acts(flow) and write_kind(flow.request) is WriteKind.DELETE_MANY:
            flow.request.stream = DeleteManyBody(lambda body: self._hold(flow, body), flow.request.headers.get("content-length"))

    def request(self, flow: http.HTTPFlow) -> None:
        """A delete on its way to the store: hold the key's write-backs, nothing more (a
        DeleteObjects was held by its DeleteManyBody)."""
        if flow.request.method != "DELETE" or not self.stick or not self.context.acts(flow) or flow.response is not None:
            return
        self._hold(flow, b"")

    def _hold(self, flow: http.HTTPFlow, body: bytes) -> None:
        refs = self._deleted_by(flow, body)
        endpoint = self.context.endpoint(flow.request)
        if not refs or endpoint is None:
            return
        writeback = self.mirroring.mirror.writeback
        for ref, _ in refs:
            writeback.hold((endpoint, ref.bucket, ref.key))
        flow.metadata[DELETING_KEY] = [[endpoint, ref.bucket, ref.key, versioned] for ref, versioned in refs]

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The store's answer to a write: the keys a delete deleted get tombstones, lose their fill
        and write-backs; the others' write-backs are released. A PUT, copy or completed multipart
        upload of a key clears its tombstone. Reads cost no coroutine."""
        if flow.request.method in _READS or not self.context.acts(flow) or flow.response is None:
            return None
        if 200 <= flow.response.status_code < 300:
            self._forget_origin_404s(flow)
        return self._answered(flow, flow.response) if self.stick else None

    def _forget_origin_404s(self, flow: http.HTTPFlow) -> None:
        """A key written or deleted through the proxy asks the origin afresh on its next miss."""
        if write_kind(flow.request) is WriteKind.DELETE_MANY:
            keys = [(str(b), str(k)) for _, b, k, _ in flow.metadata.get(DELETING_KEY, [])]
        else:
            keys = [(ref.bucket, ref.key)] if write_kind(flow.request) is not None and (ref := self.context.object(flow)) else []
        for bucket, key in keys:
            self.mirroring.mirror.guard.not_found.forget(bucket, key)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The answer to a DeleteObjects that held keys is read as it passes (its <Error> keys). It
        goes out chunked, so that the client has all of it only after the response hook has written
        the tombstones (mitmproxy sends the last chunk after that hook), whatever its size."""
        response = flow.response
        if flow.request.method == "POST" and response is not None and DELETING_KEY in flow.metadata:
            read_as_it_passes(response)

    async def _answered(self, flow: http.HTTPFlow, response: http.Response) -> None:
        deleting = flow.metadata.pop(DELETING_KEY, [])
        held = [(str(e), str(b), str(k)) for e, b, k, _ in deleting]
        succeeded = 200 <= response.status_code < 300
        kind = write_kind(flow.request)
        try:
            if held and succeeded:
                answered = response.stream.body if isinstance(response.stream, DeleteManyBody) else response.raw_content
                refused = set(keys_in(bytes(answered or b""), "Error")) if kind is WriteKind.DELETE_MANY else set()
                done = [(key, bool(versioned)) for key, (*_, versioned) in zip(held, deleting, strict=True) if key[2] not in refused]
                await self._deleted([key for key, versioned in done if not versioned or not await self._still_there(key)])
        finally:
            self._release(held)
        written = self.context.object(flow) if succeeded and kind is WriteKind.CREATE else None
        if written and await self.is_deleted(written):
            await asyncio.to_thread(self.tombstones.discard, written.bucket, written.key)
            logger.info("tombstone of s3://%s/%s cleared by a write", written.bucket, written.key)

    def error(self, flow: http.HTTPFlow) -> None:
        """No answer from the store (the client or the store went away): the delete did nothing we know of."""
        self._release([(str(e), str(b), str(k)) for e, b, k, _ in flow.metadata.pop(DELETING_KEY, [])])

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
        if there and await is_tombstoned(self.tombstones, bucket, name):
            await asyncio.to_thread(self.tombstones.discard, bucket, name)
            logger.info("tombstone of s3://%s/%s cleared: a version's delete left it in the store", bucket, name)
        return there

    async def _deleted(self, keys: list[ObjectKey]) -> None:
        mirror = self.mirroring.mirror
        for endpoint, bucket, key in keys:
            await asyncio.to_thread(self.tombstones.add, bucket, key)  # first: no write-back starts after this
            if await mirror.forget((endpoint, bucket, key)):
                logger.info("s3://%s/%s was written back while its delete was on its way: deleting it again", bucket, key)
                await asyncio.to_thread(shared_s3_client(endpoint).delete_object, Bucket=bucket, Key=key)
        if keys:
            logger.info("tombstone(s) for %s", ", ".join(f"s3://{bucket}/{key}" for _, bucket, key in keys))

    def _release(self, keys: list[ObjectKey]) -> None:
        writeback = self.mirroring.mirror.writeback
        for key in keys:
            writeback.release(key)

    def _deleted_by(self, flow: http.HTTPFlow, body: bytes) -> list[tuple[ObjectRef, bool]]:
        """The objects under Mirror rules that a DeleteObject or DeleteObjects would delete, each
        with whether only a version of it is deleted (a key named with and without a version: not)."""
        kind = write_kind(flow.request)
        reading = self.context.read(flow)
        if reading is None or not reading.bucket:
            return []
        bucket = reading.bucket
        if kind in (WriteKind.DELETE, WriteKind.DELETE_VERSION) and reading.key:
            found = [(reading.key, kind is WriteKind.DELETE_VERSION)]
        elif kind is WriteKind.DELETE_MANY and not reading.key:
            found = [(key, version is not None) for key, version in objects_in(body, "Object") if plain_key(key)]
        else:
            return []
        versioned: dict[str, bool] = {}
        for key, of_version in found:
            versioned[key] = versioned.get(key, True) and of_version
        refs = [(ObjectRef(bucket, key), only_version) for key, only_version in versioned.items()]
        return [(ref, only_version) for ref, only_version in refs if covered_by_mirror(self.context.rulebook, ref)]


def read_as_it_passes(response: http.Response) -> None:
    """A DeleteObjects answer through a `DeleteManyBody` (unless it goes through one already), sent
    chunked, so that the client has all of it only once the response hook has run: mitmproxy sends
    the last chunk after that hook, whatever the answer's size."""
    if isinstance(response.stream, DeleteManyBody):
        return
    response.stream = DeleteManyBody(lambda body: None, response.headers.get("content-length"))
    if response.http_version == "HTTP/1.1" and "content-length" in response.headers:
        del response.headers["content-length"]
        response.headers["transfer-encoding"] = "chunked"


class DeleteManyBody:
    """mitmproxy's stream function for a DeleteObjects body: each chunk passes on as it is, a copy
    is kept (up to DELETE_MANY_LIMIT), and `whole(body)` runs before the body's last byte is passed
    on, so the keys' write-backs are held before the store can have the whole request."""

    def __init__(self, whole: Callable[[bytes], None], content_length: str | None) -> None:
        self.whole = whole
        self.length = int(content_length) if content_length and content_length.isascii() and content_length.isdigit() else None
        self.body: bytearray | None = bytearray()
        self.done = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.body is not None:
            self.body += chunk
            if len(self.body) > DELETE_MANY_LIMIT:
                self.body = None  # not a delete the store accepts: nothing to hold
        ended = chunk == b"" or (self.length is not None and self.body is not None and len(self.body) >= self.length)
        if ended and not self.done and self.body is not None:
            self.done = True
            self.whole(bytes(self.body))
        return chunk
