"""The one reading of a request, the store's: the named store it goes to, the bucket and key the
store reads from it, and the Host the store sees. Pure: plain values in (`SentRequest`, `Names`), a
`Reading` or a `SetAside` out. Every part of the proxy uses this reading (through
`Context.object` and `Context.endpoint`); nothing else parses Host or the path.

How a store reads a request (checked against SeaweedFS's router, gorilla/mux, and held against a
real SeaweedFS by tests/e2e/test_reading.py):
- The Host it sees: the request's Host header, or HTTP/2's `:authority`, or an absolute-form
  target's authority. Several that differ: the proxy cannot know which one the store takes.
- Virtual-hosted (`BUCKET.DOMAIN`) for its domains, matched byte for byte (SeaweedFS: a mux Host
  pattern, case-sensitive, no trailing dot removed, the port ignored); AWS compares as DNS does
  (case and one trailing dot do not matter). A spelling the two ways read differently (`PRIV.S3.TEST`,
  `priv.s3.test.`) is one the proxy cannot be sure of. Any other name is read path-style.
- The key: the path percent-decoded as bytes, then split (Go's URL.Path); AWS splits first. Both
  ways must agree (a bucket with `%2F` does not). SeaweedFS folds `\\` and `//` into `/`, drops
  a leading `/` and refuses `.` and `..` segments; AWS keeps the key's bytes: such keys, and a
  `%` that is not an escape, are set aside too. Bytes that are not UTF-8 stay as they are
  (surrogateescape), so two keys never read as one.

A request the proxy cannot place on a named store, with a Host it knows, read the same way by
every store, is set aside: forwarded untouched, nothing else done.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote_to_bytes, urlsplit

from backorigin.s3.addressing import ObjectRef

DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_NAME = re.compile(r"^[A-Za-z0-9._~-]+$")  # a DNS name or an IPv4 address, as a Host may spell it
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class Aside(StrEnum):
    """Why a request is set aside: a label of bounded values (the metric's)."""

    UNKNOWN_STORE = "unknown-store"  # the connection goes to no named store
    UNKNOWN_HOST = "unknown-host"  # a Host the proxy does not know for the store
    UNSURE_HOST = "unsure-host"  # Host fields that disagree, or a spelling stores read differently
    UNSURE_KEY = "unsure-key"  # a path stores read as different buckets or keys, or refuse


def dns_name(name: str) -> str:
    """A host name as DNS compares it: case folded, one trailing dot dropped, IPv6 without brackets."""
    name = name.strip("[]").lower()
    return name[:-1] if name.endswith(".") else name


@dataclass(frozen=True)
class Store:
    """A store the proxy acts for: where clients' requests go (`scheme://host:port`) and where the
    proxy's own requests go (`address`: the same, or backorigin_s3_endpoint)."""

    scheme: str
    host: str  # dns_name
    port: int
    address: str

    @property
    def url(self) -> str:
        return join_url(self.scheme, self.host, self.port)

    @classmethod
    def named(cls, url: str, address: str | None = None) -> Store:
        """ValueError (saying why) for anything but http(s)://HOST[:PORT][/]."""
        scheme, host, port = split_url(url)
        return cls(scheme, host, port, join_url(*split_url(address)) if address else join_url(scheme, host, port))


def split_url(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: only a scheme, a host and a port (no path, query or credentials)")
    return parts.scheme, dns_name(parts.hostname), port or DEFAULT_PORTS[parts.scheme]


def join_url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class Names:
    """What the operator named: the stores, the Host names read path-style (dns_name), and the
    domains of virtual-hosted names (dns_name)."""

    stores: tuple[Store, ...] = ()
    path_hosts: frozenset[str] = frozenset()
    vhost_domains: tuple[str, ...] = ()

    def store_for(self, scheme: str, host: str, port: int) -> Store | None:
        """The named store a connection to scheme://host:port reaches: its own name, or a
        virtual-hosted name under one of the domains when the store is named by that domain."""
        host = dns_name(host)
        for store in self.stores:
            if store.scheme == scheme and store.port == port and (
                    store.host == host or any(store.host == d and host.endswith("." + d) for d in self.vhost_domains)):
                return store
        return None


@dataclass(frozen=True)
class SentRequest:
    """A request as it goes to the store, in plain values: where mitmproxy connects, every Host
    field it carries (an absolute-form or HTTP/2 authority first, then each Host header), the
    request target (bytes as text, surrogateescape), and the proxy's own address the client
    reached (read path-style, with `localhost` when it is a loopback address)."""

    scheme: str
    host: str
    port: int
    hosts: tuple[str, ...]
    target: str
    listen_address: str = ""


@dataclass(frozen=True)
class Reading:
    store: Store
    host: str  # the Host the store sees, as sent
    bucket: str  # "" for the service
    key: str  # "" for a bucket call
    virtual: bool = False

    @property
    def endpoint(self) -> str:
        """Where the proxy's own requests about this object go (write-backs, deletes, listings)."""
        return self.store.address

    @property
    def ref(self) -> ObjectRef | None:
        return ObjectRef(self.bucket, self.key) if self.bucket and self.key else None


@dataclass(frozen=True)
class SetAside:
    reason: Aside
    subject: str  # the Host or the store address it is about
    hint: str = field(default="", compare=False)  # what would place it (a setting), for the log


def as_recorded(sent: SentRequest, names: Names) -> Names:
    """`names` with the request's own server as a store and its own Host as a name (unless they are
    virtual-hosted names): a recording's flows, an offline URL, name the store they went to."""
    host = dns_name(sent.host)
    under = [d for d in names.vhost_domains if host.endswith("." + d)]
    stores = names.stores
    if names.store_for(sent.scheme, sent.host, sent.port) is None:
        server = under[0] if under else host
        single = stores[0].address if len(stores) == 1 else ""  # backorigin_s3_endpoint's store
        stores = (*stores, Store(sent.scheme, server, sent.port, single or join_url(sent.scheme, server, sent.port)))
    spelled = {dns_name(name) for value in sent.hosts if (name := _host_name(value)) is not None}
    plain = {name for name in spelled if not any(name.endswith("." + d) for d in names.vhost_domains)}
    return Names(stores, names.path_hosts | plain, names.vhost_domains)


def read(sent: SentRequest, names: Names) -> Reading | SetAside:
    """The store's reading of `sent`, or why the proxy cannot be sure of it."""
    store = names.store_for(sent.scheme, sent.host, sent.port)
    if store is None:
        where = join_url(sent.scheme, dns_name(sent.host), sent.port)
        return SetAside(Aside.UNKNOWN_STORE, where, f"name the store: --store {where} (backorigin_stores)")
    if len(set(sent.hosts)) != 1:
        return SetAside(Aside.UNSURE_HOST, " | ".join(sent.hosts) or "(none)",
                        "a request needs exactly one Host (HTTP/2: :authority and Host agree)")
    host = sent.hosts[0]
    placed = place_host(host, names, _listen_names(sent.listen_address))
    if isinstance(placed, SetAside):
        return placed
    parts = split_target(sent.target, placed)
    if parts is None:
        return SetAside(Aside.UNSURE_KEY, host, "stores read this path as different keys, or refuse it")
    return Reading(store, host, *parts, virtual=placed is not None)


def place_host(host: str, names: Names, listen_names: frozenset[str] = frozenset()) -> str | None | SetAside:
    """The bucket a virtual-hosted Host names, None for a Host read path-style, or why neither is sure."""
    name = _host_name(host)
    if name is None:
        return SetAside(Aside.UNSURE_HOST, host, "not a host name and port")
    known = names.path_hosts | listen_names
    exact, folded = _classify(name, known, names.vhost_domains), _classify(dns_name(name), known, names.vhost_domains)
    if exact is _AMBIGUOUS or folded is _AMBIGUOUS:
        return SetAside(Aside.UNSURE_HOST, host, "it is under two of backorigin_vhost_domains")
    if exact != folded and (isinstance(exact, str) or isinstance(folded, str)):
        return SetAside(Aside.UNSURE_HOST, host, "stores that compare names byte for byte read this spelling another way")
    if folded is _UNKNOWN:
        return SetAside(Aside.UNKNOWN_HOST, host, _host_hint(dns_name(name)))
    return folded if isinstance(folded, str) else None


_PATH, _UNKNOWN, _AMBIGUOUS = object(), object(), object()


def _classify(name: str, known: frozenset[str], domains: tuple[str, ...]) -> object:
    """_PATH, a bucket (virtual-hosted), _UNKNOWN or _AMBIGUOUS; exact names come first (SeaweedFS
    registers its path-style domains before its virtual-hosted ones)."""
    if name in known:
        return _PATH
    buckets = [name[: -len(d) - 1] for d in domains if len(name) > len(d) + 1 and name.endswith("." + d)]
    if len(buckets) > 1:
        return _AMBIGUOUS
    return buckets[0] if buckets else _UNKNOWN


def _host_name(host: str) -> str | None:
    """The name part of a Host (the port dropped, as stores do), None when it is not NAME[:DIGITS]."""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
        port = rest[1:] if rest.startswith(":") else rest
    else:
        name, _, port = host.partition(":")  # the first colon, as gorilla/mux splits it
        if not HOST_NAME.match(name):
            return None
    return name if not port or (port.isascii() and port.isdigit()) else None


def _listen_names(address: str) -> frozenset[str]:
    if not address:
        return frozenset()
    try:
        loopback = ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = False
    return frozenset({dns_name(address), "localhost"} if loopback else {dns_name(address)})


def _host_hint(name: str) -> str:
    labels = name.split(".")
    vhost = f" or, if it is BUCKET.DOMAIN of a store that answers virtual-hosted names, " \
            f"--set backorigin_vhost_domains={'.'.join(labels[1:])}" if len(labels) > 2 else ""
    return f"if clients reach the store by this name, --set backorigin_store_hosts={name}{vhost}"


def split_target(target: str, bucket: str | None) -> tuple[str, str] | None:
    """(bucket, key) of a request target: `bucket` given (virtual-hosted), the whole path is the
    key. None when stores would read it differently or refuse it (see the module's doc)."""
    raw = target.split("?", 1)[0].encode("utf-8", "surrogateescape")
    if not raw.startswith(b"/") or _BAD_ESCAPE.search(raw):
        return None
    if bucket is None:
        first, _, rest = raw[1:].partition(b"/")
        decoded_first = _text(unquote_to_bytes(first))
        bucket, _, key = _text(unquote_to_bytes(raw[1:])).partition("/")  # decoded, then split (Go)
        if bucket != decoded_first:  # split, then decoded (AWS): a %2F in the bucket
            return None
        if not _plain_bucket(bucket, key):
            return None
    else:
        key = _text(unquote_to_bytes(raw[1:]))
    return (bucket, key) if plain_key(key) else None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _plain_bucket(bucket: str, key: str) -> bool:
    if not bucket:
        return not key  # "//key": no bucket at all
    return bucket not in (".", "..") and not any(c in bucket for c in "\\\x00")


def plain_key(key: str) -> bool:
    """A key every store reads as these bytes (SeaweedFS folds `\\` and `//`, drops a leading `/`,
    refuses `.` and `..` segments and NUL; AWS keeps them all)."""
    if not key:
        return True
    if key.startswith("/") or "//" in key or "\\" in key or "\x00" in key:
        return False
    return not any(segment in (".", "..") for segment in key.split("/"))
