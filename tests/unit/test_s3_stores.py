"""The stores and names the options give (backorigin.stores.names_of), options that contradict each
other, the loop marker (miss.loop) and the proxy's own listeners (miss.addresses)."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from backorigin.miss.addresses import RedirectRefused, checked_address, is_listener
from backorigin.miss.loop import LoopMarker
from backorigin.stores import names_of


def options(**given):
    return SimpleNamespace(**{"mode": ["regular"], "backorigin_stores": [], "backorigin_store_hosts": [], "backorigin_vhost_domains": [],
                              "backorigin_s3_endpoint": None, "keep_host_header": False, "listen_host": "", **given})


def test_reverse_modes_store_is_its_target_and_the_endpoint_its_address():
    names = names_of(options(mode=["reverse:http://Store.test:8333"], backorigin_s3_endpoint="http://10.0.0.9:9000"))
    (store,) = names.stores
    assert (store.url, store.address) == ("http://store.test:8333", "http://10.0.0.9:9000")
    assert {"store.test", "10.0.0.9"} <= names.path_hosts


def test_the_endpoint_alone_names_the_store_as_it_did():
    (store,) = names_of(options(backorigin_s3_endpoint="http://127.0.0.1:8333")).stores
    assert store.url == store.address == "http://127.0.0.1:8333"
    assert names_of(options()).stores == ()  # regular mode, nothing named: every request is forwarded untouched


@pytest.mark.parametrize("given, message", [
    (dict(mode=["reverse:http://s:1"], backorigin_stores=["http://other:2"]), "is not reverse mode's target"),
    (dict(backorigin_stores=["http://a:1", "http://b:2"], backorigin_s3_endpoint="http://c:3"), "one address for the proxy's own"),
    (dict(mode=["reverse:http://s:1"], backorigin_vhost_domains=["s3.test"]), "unless keep_host_header is set"),
    (dict(backorigin_vhost_domains=["s3.test", "x.s3.test"]), "x.s3.test is under s3.test"),
    (dict(backorigin_stores=["s3.test:80"]), "backorigin_stores"),
    (dict(backorigin_stores=["http://s/bucket"]), "only a scheme, a host and a port"),
    (dict(backorigin_store_hosts=["lb.test:8080"]), "is not a host name"),
    (dict(backorigin_store_hosts=["pub.s3.test"], backorigin_vhost_domains=["s3.test"]), "is BUCKET.DOMAIN under"),
    (dict(backorigin_stores=["http://pub.s3.test:80"], backorigin_vhost_domains=["s3.test"]), "name the store by its domain"),
])
def test_options_that_contradict_each_other_are_refused(given, message):
    with pytest.raises(ValueError, match=message):
        names_of(options(**given))


def test_reverse_mode_with_keep_host_header_reads_virtual_hosted_names():
    names = names_of(options(mode=["reverse:http://s:1"], keep_host_header=True, backorigin_vhost_domains=["S3.Test."]))
    assert names.vhost_domains == ("s3.test",) and "s3.test" in names.path_hosts


def test_the_loop_marker_is_the_processs_own_and_travels_through_a_fleet():
    ours, theirs = LoopMarker(), LoopMarker()
    assert ours.token != theirs.token and len(ours.token) >= 20
    assert not ours.came_back(["1"]) and not ours.came_back([]) and not ours.came_back([theirs.value()])
    assert ours.came_back([ours.value()]) and ours.came_back([theirs.value(ours.value())])  # back through another proxy
    assert ours.value(", ".join(str(n) for n in range(100))).count(",") == 15  # what is carried is bounded


def test_a_listener_is_its_address_or_any_of_this_machine_for_a_wildcard():
    assert is_listener("127.0.0.1", ["127.0.0.1"]) and not is_listener("127.0.0.2", ["127.0.0.1"])
    assert is_listener("127.0.0.2", ["0.0.0.0"]) and is_listener("::1", ["::"]) and is_listener("::ffff:127.0.0.1", ["127.0.0.1"])
    assert is_listener("127.0.0.1", ["localhost"]) and not is_listener("192.0.2.7", [""])  # not an address of this machine


async def test_the_proxys_own_listeners_are_never_fetched_from_whatever_hosts_are_allowed():
    own = [("127.0.0.1", 8080), ("0.0.0.0", 9464)]
    for url in ("http://127.0.0.1:8080/x", "http://localhost:9464/metrics", "http://127.0.0.9:9464/"):
        with pytest.raises(RedirectRefused, match="the proxy's own listeners"):
            await checked_address(urlsplit(url), True, own)
    assert await checked_address(urlsplit("http://127.0.0.1:8081/x"), True, own) is None  # the rule's host, another port
    assert await checked_address(urlsplit("http://127.0.0.2:8080/x"), True, own) == "127.0.0.2"  # pinned: it was checked
