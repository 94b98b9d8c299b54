"""The stores the proxy acts for and the names clients reach them by, as a child addon of
BackOrigin: their options, checked against each other and against mitmproxy's mode, made into
the `Names` the one reading uses (s3.reading); and the requests set aside, each logged once per
Host or store (up to LOGGED_LIMIT of them) and counted by reason (a bounded metric label)."""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from backorigin.context import Context
from backorigin.options import declare, option_names, optional_text, read_settings, texts
from backorigin.s3.reading import HOST_NAME, Names, SetAside, Store, dns_name

logger = logging.getLogger(__name__)

LOGGED_LIMIT = 1000  # distinct Hosts and stores logged when first set aside; the metric counts them all


@dataclass(frozen=True)
class StoreSettings:
    """The stores and their names (declared by every child that reads one: mitmproxy takes a
    declaration made again with the same signature)."""

    stores: tuple[str, ...] = texts(
        "backorigin_stores",
        "The stores the proxy acts for, each http(s)://HOST[:PORT] (repeatable; backorigin run --store). Reverse "
        "mode's store is its target. A request to any other host is forwarded untouched.")
    store_hosts: tuple[str, ...] = texts(
        "backorigin_store_hosts",
        "More Host names clients use for the store, read path-style (a load balancer's, a DNS name of the proxy). "
        "Known already: the stores' own names, the proxy's address (and localhost on loopback), the vhost domains.")
    vhost_domains: tuple[str, ...] = texts(
        "backorigin_vhost_domains",
        "Domains of virtual-hosted-style names (BUCKET.DOMAIN/key) the store answers. In reverse mode they need "
        "keep_host_header.")
    s3_endpoint: str | None = optional_text(
        "backorigin_s3_endpoint",
        "Where the proxy's own requests to the store go (write-backs, deletes, listings, its HEADs), e.g. "
        "http://127.0.0.1:8333, when the name clients use does not work from the proxy. Names the store when "
        "no other option does; with several stores it cannot say whose address it is, and is refused.")


OPTIONS = option_names(StoreSettings) | {"mode", "keep_host_header", "listen_host"}


class Stores:
    def __init__(self, context: Context) -> None:
        self.context = context

    def load(self, loader: Loader) -> None:
        declare(StoreSettings, loader)

    def configure(self, updated: set[str]) -> None:
        if OPTIONS & updated:
            try:
                self.context.names = names_of(ctx.options)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None


class SetAsideLog:
    """Live requests set aside (Context's `set_aside`): counted by reason (ui.metrics), and logged
    the first time each Host (or store) is seen."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # requests set aside, by reason
        self._logged: set[str] = set()

    def note(self, aside: SetAside) -> None:
        """A live request set aside: counted, and logged the first time its Host (or store) is seen."""
        self.counts[aside.reason] += 1
        subject = f"{aside.reason}:{aside.subject}"
        if subject in self._logged or len(self._logged) > LOGGED_LIMIT:
            return
        self._logged.add(subject)
        if len(self._logged) > LOGGED_LIMIT:
            logger.warning("more requests set aside for Hosts or stores not logged yet: only the metric counts them now")
            return
        logger.warning("forwarded untouched (%s): %s; %s", aside.reason, aside.subject, aside.hint)


def names_of(options: Any) -> Names:
    """The Names the options give, ValueError for options that contradict each other."""
    settings = read_settings(StoreSettings, options)
    modes = [ProxyMode.parse(spec) for spec in getattr(options, "mode", [])]
    targets = [Store.named(f"{m.scheme}://{m.address[0]}:{m.address[1]}") for m in modes if isinstance(m, ReverseMode)]
    only_reverse = bool(modes) and len(targets) == len(modes)
    endpoint = settings.s3_endpoint
    try:
        named = [Store.named(url) for url in settings.stores]
        if endpoint:
            Store.named(endpoint)
    except ValueError as e:
        raise ValueError(f"{'backorigin_stores' if settings.stores else 'backorigin_s3_endpoint'}: {e}") from None
    urls = list(dict.fromkeys(store.url for store in [*targets, *named]))
    if only_reverse and (strays := [url for url in urls if url not in {t.url for t in targets}]):
        raise ValueError(f"backorigin_stores: {', '.join(strays)} is not reverse mode's target: in reverse mode the "
                         f"store is the target ({', '.join(t.url for t in targets)})")
    if not urls and endpoint:
        urls = [Store.named(endpoint).url]
    if endpoint and len(urls) > 1:
        raise ValueError(f"backorigin_s3_endpoint: one address for the proxy's own requests, but {len(urls)} stores are "
                         f"named ({', '.join(urls)}): give each proxy one store, or leave backorigin_s3_endpoint out")
    stores = tuple(Store.named(url, endpoint) for url in urls)
    domains = tuple(dict.fromkeys(_names("backorigin_vhost_domains", settings.vhost_domains)))
    for domain in domains:
        if under := [d for d in domains if domain.endswith("." + d)]:
            raise ValueError(f"backorigin_vhost_domains: {domain} is under {under[0]}, so BUCKET.{domain} reads two ways; "
                             f"if the store answers {domain} path-style, list it in backorigin_store_hosts instead")
    if domains and only_reverse and not getattr(options, "keep_host_header", False):
        raise ValueError("backorigin_vhost_domains: in reverse mode mitmproxy gives the store its own address as Host "
                         "unless keep_host_header is set; no virtual-hosted name can reach it")
    listed = _names("backorigin_store_hosts", settings.store_hosts)
    for name in [*listed, *(store.host for store in stores)]:
        if under := [d for d in domains if name.endswith("." + d)]:
            raise ValueError(f"{name} is BUCKET.DOMAIN under backorigin_vhost_domains ({under[0]}): a store that answers it "
                             "virtual-hosted reads another bucket than a path-style name would; name the store by its domain")
    hosts = {*listed, *domains}
    hosts |= {store.host for store in stores} | {dns_name(Store.named(s.address).host) for s in stores}
    if getattr(options, "listen_host", ""):
        hosts.add(dns_name(options.listen_host))
    return Names(stores, frozenset(hosts), domains)


def _names(option: str, values: Sequence[str]) -> list[str]:
    """Host names as DNS compares them; ValueError for one that is not a name (a port, a path...)."""
    names = [dns_name(value) for value in values]
    for value, name in zip(values, names, strict=True):
        if not HOST_NAME.match(name) and not _is_ipv6(name):
            raise ValueError(f"{option}: {value!r} is not a host name")
    return names


def _is_ipv6(name: str) -> bool:
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        return False
    return True
