"""Where an origin fetch may connect (miss.origin): never to one of the proxy's own listeners
(its proxy ports, mitmweb, the metrics endpoint, the loopback miss server), whatever hosts the
operator allows; to a host that is neither the rule's nor the operator's only at public
addresses; and always at the address that was checked, so a name cannot resolve elsewhere the
second time (DNS rebinding)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import SplitResult


class RedirectRefused(Exception):
    """A redirect the fetch does not follow; the message says why."""


async def checked_address(parts: SplitResult, rules_host: bool, own_listeners: Iterable[tuple[str, int]]) -> str | None:
    """The address to connect to for `parts`, which was checked (None: connect by name, a host of
    the rule's or the operator's, on a port where the proxy does not listen); RedirectRefused
    for one of the proxy's own listeners, and for a host that is neither the rule's nor the
    operator's (`rules_host`) with an address that is not public."""
    port = _port(parts)
    listeners = [host for host, listening in own_listeners if listening == port]
    if rules_host and not listeners:
        return None
    addresses = await _resolved(parts)
    if listeners and any(is_listener(address, listeners) for address in addresses):
        raise RedirectRefused(f"{parts.netloc} is one of the proxy's own listeners")
    if not rules_host and (private := [a for a in addresses if not is_public(a)]):
        raise RedirectRefused(f"redirect to {parts.hostname} ({', '.join(private)}), not a public address "
                              "and not one of the rule's hosts (backorigin_origin_hosts allows more)")
    return addresses[0]


async def _resolved(parts: SplitResult) -> list[str]:
    host = parts.hostname or ""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, _port(parts), type=socket.SOCK_STREAM)
    except OSError as e:
        raise RedirectRefused(f"redirect to {host}, which does not resolve: {e}") from None
    if not found:
        raise RedirectRefused(f"redirect to {host}, which has no address")
    return [str(info[4][0]) for info in found]


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def is_listener(address: str, listeners: Iterable[str]) -> bool:
    """Whether a connection to `address` reaches a socket listening on one of `listeners` (the
    same port assumed): the same address, or any address of this machine for a wildcard one."""
    ip = _ip(address)
    for listening in listeners:
        where: ipaddress.IPv4Address | ipaddress.IPv6Address | None
        try:
            where = _ip(listening or "::")
        except ValueError:  # a name (mitmweb's web_host may be one): localhost, or not an address of ours
            where = ipaddress.ip_address("127.0.0.1") if listening.lower().rstrip(".") == "localhost" else None
        if where is not None and where.is_unspecified:
            if ip.is_loopback or ip.is_unspecified or _is_local(ip):
                return True
        elif where is not None and (where == ip or where.is_loopback and ip.is_loopback and listening == "localhost"):
            return True
    return False


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _is_local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address of this machine: one a socket can be bound to."""
    with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def is_public(address: str) -> bool:
    """A unicast address reachable on the internet: not loopback, private, link-local (169.254/16,
    fe80::/10, the cloud metadata address among them), unique local, unspecified, reserved or shared."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
