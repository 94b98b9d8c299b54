"""Real components shared by the end-to-end tests: a SeaweedFS store and the documented mitmdump
with the addon in front of it (the scripted origin is tests/conftest.py's)."""

from __future__ import annotations

import pytest

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.support import Mitmdump

BUCKETS = ("mirror-bucket", "suffix-bucket", "headers-bucket", "plain-bucket")


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("seaweed"), free_ports(1, with_grpc=True)[0])
    store.start()
    store.create_buckets(list(BUCKETS))
    yield store
    store.stop()


@pytest.fixture(scope="session")
def s3(store):
    return store.client()


@pytest.fixture(scope="session")
def proxy(tmp_path_factory, store, rules_file):
    """The documented reverse-proxy set-up, shared by the end-to-end tests."""
    proxy = Mitmdump(
        f"reverse:{store.endpoint}", rules_file, tmp_path_factory.mktemp("proxy"),
        {"backorigin_origin_timeout": "1.5"},
    ).start()
    yield proxy
    proxy.stop()
