"""The merged listing as a child addon of BackOrigin (option backorigin_merged_listing): a
ListObjects(V2) request through the proxy is answered with the merge of the store's listing and
its bucket's S3 origins' (see backorigin.listing), once the store has let the client list."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from backorigin.context import Context
from backorigin.listing.hiding import Hide
from backorigin.listing.merge import Side, merged_listing
from backorigin.listing.order import Learned, Order, reordered
from backorigin.listing.request import ListingError, is_our_token, list_request
from backorigin.listing.sources import boto3_pages, in_order, not_s3, origin_s3_client, origin_side, probe_order, without
from backorigin.options import declare, flag, read_settings
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.rules.targets import NotAnS3Origin, OriginBucket
from backorigin.s3 import replies
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.clients import shared_s3_client
from backorigin.s3.reading import Reading
from backorigin.s3.storeclient import StoreClient, upstream_proxy, upstream_verification

logger = logging.getLogger(__name__)

NOT_S3_RETRY = 60.0  # seconds an origin that did not answer like S3 is left out before it is asked again


@dataclass(frozen=True)
class ListingSettings:
    merged: bool = flag(
        "backorigin_merged_listing", False,
        "ListObjects(V2) through the proxy also list the objects of Mirror rules whose origin is an S3 bucket "
        "(MirrorURL http(s)://host/BUCKET/[PREFIX/], public or MirrorAuth), merged into the bucket's listing.")


class MergedListing:
    """boto3 clients for the store and the origins (cached), the key order of each store (asked
    with a probe) and of each origin (learned from its pages), and the store client that asks
    whether the store lets the client list."""

    def __init__(self, context: Context | None = None, tombstoned: Hide | None = None,
                 store_client: Callable[[str], Any] = shared_s3_client,
                 leases_under: Callable[[str], str | None] = lambda bucket: None) -> None:
        """`tombstoned(bucket, base, order, lister)`: an origin side's lister less the keys deleted
        through the proxy, which origins do not list (listing.hiding.hide_in_force: it asks only
        about the keys listed); `store_client(endpoint)`: a boto3 client with the proxy's own credentials;
        `leases_under(bucket)`: the prefix of the bucket's own keys that are the fleet's leases
        (miss.leases), left out of the store's side."""
        self.context = context
        self.tombstoned = tombstoned
        self.leases_under = leases_under
        self.store_client = store_client
        self.enabled = False
        self.store = StoreClient()
        self._origin_clients: dict[tuple[str, str, str, str], Any] = {}
        self._store_orders: dict[str, Order] = {}  # store endpoint -> its order (order.probe_order)
        self._probing = asyncio.Lock()  # one probe at a time: listings waiting for it share its answer
        self._learned: dict[str, Learned] = {}  # origin endpoint/bucket -> what its pages showed of its order
        self._not_s3: dict[str, float] = {}  # origin endpoint/bucket -> when it last did not answer like S3

    def load(self, loader: Loader) -> None:
        declare(ListingSettings, loader)

    def configure(self, updated: set[str]) -> None:
        self.enabled = read_settings(ListingSettings, ctx.options).merged
        if {"ssl_insecure", "ssl_verify_upstream_trusted_ca"} & updated:
            self.store.verify = upstream_verification(ctx.options)

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A listing through the proxy, merged when its bucket has merged rules; anything else costs no coroutine."""
        context = self.context
        if not self.enabled or flow.request.method != "GET" or context is None or not context.acts(flow) or flow.response is not None:
            return None
        return self._list(flow, context)

    async def _list(self, flow: http.HTTPFlow, context: Context) -> None:
        reading = context.read(flow)
        if reading is None:
            return
        listing = await self.answer(flow.request, context.rulebook, reading, upstream_proxy(flow), self.tombstoned)
        if listing is not None:
            flow.response = listing

    async def aclose(self) -> None:
        await self.store.aclose()

    def origin_client(self, endpoint: str, rule: RoutingRule) -> Any:
        auth = rule.Redirect.MirrorAuth
        cache_key = (endpoint, auth.Region, auth.AccessKeyId, auth.AccessKeySecret.get_secret_value()) if auth else (endpoint, "", "", "")
        if cache_key not in self._origin_clients:
            self._origin_clients[cache_key] = origin_s3_client(endpoint, rule)
        return self._origin_clients[cache_key]

    async def store_order(self, endpoint: str, client: Any, bucket: str) -> Order:
        """The store's key order, asked once with a probe in `bucket` (sources.probe_order)."""
        async with self._probing:
            if endpoint not in self._store_orders:
                try:
                    self._store_orders[endpoint] = await asyncio.to_thread(probe_order, client, bucket)
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                    raise ListingError(503, "ServiceUnavailable", (
                        f"cannot learn the store's key order: the proxy writes, lists and deletes two empty objects "
                        f"{bucket}/.backorigin-order-probe-* for it, and the store said: {e}")) from e
                logger.info("the store %s lists keys in %s order (asked)", endpoint, self._store_orders[endpoint])
            return self._store_orders[endpoint]

    async def sides(self, bucket: str, book: RuleBook, store_endpoint: str, request: http.Request,
                    tombstoned: Hide | None = None) -> list[Side]:
        """The store's side and the side of every merged rule's origin that answers like S3, in
        RuleNumber order (less the keys `tombstoned` leaves out); just the store's when no rule is merged.
        Each origin is read in the store's order: as it lists when its pages showed that is its order,
        else reordered."""
        store = self.store_client(store_endpoint)
        store_order = await self.store_order(store_endpoint, store, bucket)
        lister = in_order(boto3_pages(store, bucket), store_order)
        leases = self.leases_under(bucket)
        sides = [Side(without(lister, leases) if leases else lister, order=store_order)]
        for rule in book.rules_for(bucket):
            try:
                where = OriginBucket.of(rule)
            except NotAnS3Origin:
                continue
            name = f"{where.endpoint}/{where.bucket}"
            if time.monotonic() - self._not_s3.get(name, -NOT_S3_RETRY) < NOT_S3_RETRY:
                continue
            client = self.origin_client(where.endpoint, rule)
            try:
                if name not in self._learned:  # its first listing: does it answer like S3?
                    await asyncio.to_thread(client.list_objects_v2, Bucket=where.bucket, MaxKeys=1)
            except Exception as e:
                if not_s3(e):
                    logger.warning("merged listing leaves out %s (RuleNumber %d): it does not answer like an S3 bucket: %s",
                                   name, rule.RuleNumber, e)
                    self._not_s3[name] = time.monotonic()
                    continue
                raise ListingError(503, "ServiceUnavailable", f"cannot list the origin {name}: {e}") from e
            learned = self._learned.setdefault(name, Learned(name))
            pages = boto3_pages(client, where.bucket)
            lister = in_order(pages, store_order) if learned.order == store_order else reordered(pages, store_order, learned)
            if tombstoned is not None:
                lister = tombstoned(bucket, where.base, store_order, lister)
            side = origin_side(rule, book, bucket, lister, request, store_order)
            if side is not None:
                sides.append(side)
        return sides

    async def store_allows(self, request: http.Request, host: str, via: str | None, continuing: bool) -> bool:
        """Whether the store lets the client list: the client's own request, sent as is (so its
        signature holds). 200 says yes; on a page after the first, so does a 400 InvalidArgument
        (stores that check the signature and the right to list before they read the token do not
        know ours; SeaweedFS reads it as a start-after and answers 200). Anything else, or no
        answer, is the store's to give: False."""
        answer = await self.store.ask(request, host, via)
        if answer is None:
            return False
        return answer.status == 200 or (
            continuing and answer.status == 400 and replies.error_code_of(answer.body) == "InvalidArgument"
        )

    async def answer(
        self, request: http.Request, book: RuleBook, reading: Reading, via: str | None = None,
        tombstoned: Hide | None = None,
    ) -> http.Response | None:
        """The merged answer to a ListObjects(V2) request, or None: not a listing, no merged rule
        for its bucket, a continuation token that is not ours (the store's own), or the store did
        not let the client list (then mitmproxy sends the request on and the store answers it).
        Every page is answered only once the store let the client's own request through
        (`store_allows`): the store decides who may list, the proxy lists with its own credentials.
        `via`: mitmproxy's upstream proxy (s3.storeclient.upstream_proxy)."""
        listed = list_request(request, reading)
        if listed is None or not any(_merged(rule) for rule in book.rules_for(listed.bucket)):
            return None
        token = request.query.get("continuation-token", "") if listed.version == 2 else ""
        if token and not is_our_token(token):
            return None  # the store's own token (a listing begun before merging was on): the store answers
        if not await self.store_allows(request, reading.host, via, continuing=bool(token)):
            return None
        query = {name: value for name, value in reversed(request.query.items(multi=True))}  # the first of each wins
        try:
            sides = await self.sides(listed.bucket, book, reading.endpoint, request, tombstoned)
            body = await merged_listing(query, listed.bucket, sides[0], sides[1:], version=listed.version)
        except ListingError as e:
            logger.warning("merged listing of %s: %s", listed.bucket, e.message)
            return _error(request, e, listed.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            logger.warning("merged listing of %s failed: %s", listed.bucket, e)
            return _error(request, ListingError(503, "ServiceUnavailable", f"merged listing failed: {e}"), listed.bucket)
        return replies.to_response(request, replies.Reply(200, [("content-type", "application/xml"),
                                                                ("x-amz-request-id", replies.new_request_id())], body))


def _merged(rule: RoutingRule) -> bool:
    try:
        OriginBucket.of(rule)
    except NotAnS3Origin:
        return False
    return True


def _error(request: http.Request, error: ListingError, bucket: str) -> http.Response:
    return replies.to_response(request, replies.s3_error(error.status, error.code, error.message, ObjectRef(bucket, "")))
