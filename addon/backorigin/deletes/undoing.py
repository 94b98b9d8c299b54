"""Write-backs being undone. A delete the store accepted while a write-back of the key was
uploading is answered at once; the upload may still land, and the proxy then deletes the object
again (deletes.addon.overtake). Until that has finished, the store may hold, for a moment, an object
the client deleted: GETs and HEADs of such keys are answered 404 NoSuchKey by the proxy, as the
store answers them once the undo is done. A write of the key through the proxy makes the store's
object the client's own again (the undo deletes only the write-back's own ETag)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Iterable

from mitmproxy import http

from backorigin.context import Context
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectKey


class Undoing:
    def __init__(self) -> None:
        self._keys: Counter[ObjectKey] = Counter()  # a key may be deleted twice while the first undo runs

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, key: ObjectKey) -> bool:
        return key in self._keys

    async def during(self, keys: Iterable[ObjectKey], work: Awaitable[None]) -> None:
        """Run `work` (the undo of these keys' write-backs), hiding the keys while it runs."""
        keys = list(keys)
        self._keys.update(keys)
        try:
            await work
        finally:
            for key in keys:
                if self._keys[key] > 1:
                    self._keys[key] -= 1
                else:
                    self._keys.pop(key, None)

    def written(self, key: ObjectKey) -> None:
        self._keys.pop(key, None)

    def hide(self, flow: http.HTTPFlow, context: Context) -> None:
        """A GET or HEAD of a key being undone: 404, the store is not asked."""
        ref, endpoint = context.object(flow), context.endpoint(flow.request)
        if flow.response is None and ref is not None and endpoint is not None and (endpoint, ref.bucket, ref.key) in self:
            flow.response = replies.to_response(flow.request, replies.no_such_key(ref))
