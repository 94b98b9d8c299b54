"""One origin fetch per fleet, as a child addon of BackOrigin: the options of miss.leases (where
leases live, how long one lasts, how long a miss waits for another proxy's fill), checked in
configure and handed to the mirror's Leases. On by default; `backorigin_leases=off` turns it off."""

from __future__ import annotations

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from backorigin.miss.leases import Leases, owner_name
from backorigin.miss.leasestore import DEFAULT_PLACE, LeasePlace, LeaseSettings
from backorigin.options import declare, read_settings
from backorigin.tombstones.tombstones import StoreTombstones
from backorigin.writeback.proxyspools import proxy_name

OPTIONS = ("backorigin_leases", "backorigin_lease_ttl", "backorigin_lease_wait")


def lease_place(where: str) -> LeasePlace | None:
    """backorigin_leases: s3://BUCKET/PREFIX/, "bucket" or "off" (ValueError otherwise)."""
    if where == "off":
        return None
    if where == "bucket":
        return LeasePlace(None)
    return LeasePlace(*StoreTombstones.parse(where))  # the same form as backorigin_tombstones'


class FleetLeases:
    def __init__(self, leases: Leases) -> None:
        self.leases = leases

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "backorigin_leases", str, DEFAULT_PLACE,
            "Proxies in front of one store fetch a new object once between them, taking turns through a lease "
            "written create-only in the store: s3://BUCKET/PREFIX/ keeps leases in that bucket of the store (a proxy "
            "creates it if the store lacks it); 'bucket' keeps each in the object's own bucket, at its root, while "
            "the object is fetched and stored (for a store where the proxy may not create a bucket); 'off': each "
            "proxy fetches on its own.",
        )
        declare(LeaseSettings, loader)

    def configure(self, updated: set[str]) -> None:
        leases = self.leases
        if leases.settings.owner and not {*OPTIONS, "listen_host", "listen_port", "mode"} & updated:
            return  # configured before, and nothing it depends on changed
        options = ctx.options
        try:
            place = lease_place(options.backorigin_leases)
        except ValueError as e:
            raise exceptions.OptionsError(f"backorigin_leases: {e} (give s3://BUCKET/PREFIX/, bucket or off)") from None
        owner = owner_name(proxy_name(options.mode, options.listen_host, options.listen_port))
        leases.settings = read_settings(LeaseSettings, options, place=place, owner=owner)
