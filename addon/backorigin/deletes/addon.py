"""Deletes that stick, as a child addon of BackOrigin (see deletes.tombstones for where the
tombstones live).

A DeleteObject or DeleteObjects through the proxy, for a key a Mirror rule covers, leaves a
tombstone once the store has answered 2xx; a PUT, CopyObject or CompleteMultipartUpload of the key
clears it. While a delete is on its way, misses of the key do not mirror, a fill under way is
never stored, a queued write-back is withdrawn and one being uploaded lands first, so the delete
always comes last.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from backorigin.context import Context
from backorigin.deletes.tombstones import Tombstones, TombstonesError, is_tombstoned, open_tombstones
from backorigin.miss.addon import Mirroring
from backorigin.options import check_choice
from backorigin.rules.plan import covered_by_mirror
from backorigin.s3.addressing import ObjectRef, WriteKind, bucket_of, keys_in, write_kind
from backorigin.s3.store import reverse_target

logger = logging.getLogger(__name__)

DELETES = ("stick", "resurrect")
DELETING_KEY = "backorigin_deleting"  # a delete's keys, from its request hook to its response hook


class Deletes:
    def __init__(self, context: Context, mirroring: Mirroring) -> None:
        self.context = context
        self.mirroring = mirroring
        self.stick = True
        self.tombstones: Tombstones  # made in configure: beside the spool, or in the store
        self._deleting: set[tuple[str, str]] = set()  # deletes sent to the store, not yet answered

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
        store = options.backorigin_s3_endpoint or reverse_target(options)
        spool = self.mirroring.mirror.writeback.spool.directory
        if not hasattr(self, "tombstones") or {"backorigin_tombstones", "backorigin_spool_dir", "confdir"} & updated:
            try:
                found = open_tombstones(options.backorigin_tombstones, spool / "tombstones", store)
            except TombstonesError as e:
                raise exceptions.OptionsError(f"backorigin_tombstones: {e}") from None
            assert found is not None  # there is a default folder
            self.tombstones = found
        # the write-back worker checks tombstones before every upload, where they live
        self.mirroring.mirror.writeback.tombstones = (options.backorigin_tombstones, store) if self.stick else None

    async def is_deleted(self, ref: ObjectRef) -> bool:
        """Whether a miss of the key must not mirror: deleted through the proxy, or being deleted."""
        if not self.stick or not covered_by_mirror(self.context.rulebook, ref):
            return False
        return (ref.bucket, ref.key) in self._deleting or await is_tombstoned(self.tombstones, ref.bucket, ref.key)

    def under(self, bucket: str, prefix: str) -> list[str]:
        """Keys of the bucket under `prefix` that a merged listing hides (blocking: run in a thread)."""
        if not self.stick:
            return []
        return [key for b, key in self.tombstones if b == bucket and key.startswith(prefix)]

    # hooks -------------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if not self.stick or not self.context.acts(flow) or flow.response is not None:
            return
        refs = self._deleted_by(flow)
        if not refs:
            return
        endpoint = self.context.endpoint(flow.request)
        for ref in refs:
            self._deleting.add((ref.bucket, ref.key))
            await self.mirroring.mirror.forget((endpoint, ref.bucket, ref.key))
        flow.metadata[DELETING_KEY] = [[ref.bucket, ref.key] for ref in refs]

    async def response(self, flow: http.HTTPFlow) -> None:
        """The store's answer to a write: a delete that succeeded leaves tombstones; a PUT,
        copy or completed multipart upload of a key clears its tombstone."""
        response = flow.response
        if not self.stick or not self.context.acts(flow) or response is None:
            return
        deleting = [ObjectRef(*ref) for ref in flow.metadata.pop(DELETING_KEY, [])]
        succeeded = 200 <= response.status_code < 300
        kind = write_kind(flow.request)
        if deleting and succeeded:
            refused = set(keys_in(response.raw_content or b"", "Error")) if kind is WriteKind.DELETE_MANY else set()
            done = [ref for ref in deleting if ref.key not in refused]
            for ref in done:
                await asyncio.to_thread(self.tombstones.add, ref.bucket, ref.key)
            logger.info("tombstone(s) for %s", ", ".join(f"s3://{r.bucket}/{r.key}" for r in done))
        for ref in deleting:
            self._deleting.discard((ref.bucket, ref.key))
        written = self.context.object(flow) if succeeded and kind is WriteKind.CREATE else None
        if written and covered_by_mirror(self.context.rulebook, written) and await self.is_deleted(written):
            await asyncio.to_thread(self.tombstones.discard, written.bucket, written.key)
            logger.info("tombstone of s3://%s/%s cleared by a write", written.bucket, written.key)

    def error(self, flow: http.HTTPFlow) -> None:
        for ref in flow.metadata.pop(DELETING_KEY, []):
            self._deleting.discard(tuple(ref))

    def _deleted_by(self, flow: http.HTTPFlow) -> list[ObjectRef]:
        """The objects under Mirror rules that a DeleteObject or DeleteObjects would delete."""
        kind = write_kind(flow.request)
        if kind is WriteKind.DELETE:
            refs = [ref] if (ref := self.context.object(flow)) else []
        elif kind is WriteKind.DELETE_MANY and (bucket := bucket_of(flow.request, self.context.vhost_domains)):
            refs = [ObjectRef(bucket, key) for key in keys_in(flow.request.raw_content or b"", "Object")]
        else:
            return []
        return [ref for ref in refs if covered_by_mirror(self.context.rulebook, ref)]
