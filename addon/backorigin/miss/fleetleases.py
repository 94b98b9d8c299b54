"""One origin fetch per fleet, as a child addon of BackOrigin: the options of miss.leases (where
leases live, how long one lasts, how long a miss waits for another proxy's fill), checked in
configure and handed to the mirror's Leases. On by default; `backorigin_leases=off` turns it off."""

from __future__ import annotations

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader

from backorigin.miss.leases import Leases, owner_name
from backorigin.miss.leasestore import LeaseSettings
from backorigin.options import declare, option_names, read_settings
from backorigin.writeback.proxyspools import proxy_name


class FleetLeases:
    def __init__(self, leases: Leases) -> None:
        self.leases = leases

    def load(self, loader: Loader) -> None:
        declare(LeaseSettings, loader)

    def configure(self, updated: set[str]) -> None:
        leases = self.leases
        if leases.settings.owner and not {*option_names(LeaseSettings), "listen_host", "listen_port", "mode"} & updated:
            return  # configured before, and nothing it depends on changed
        options = ctx.options
        owner = owner_name(proxy_name(options.mode, options.listen_host, options.listen_port))
        leases.settings = read_settings(LeaseSettings, options, owner=owner)
