"""Real components shared by the end-to-end tests: a SeaweedFS store and the documented mitmdump
with the addon in front of it (the scripted origin is tests/conftest.py's)."""

from __future__ import annotations

import pytest

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.origin_server import ScriptedOrigin
from tests.support import Mitmdump
from tests.sweep_support import ORIGIN_KEYS, start_s3_origin, stop_quickly

BUCKETS = ("mirror-bucket", "suffix-bucket", "headers-bucket", "plain-bucket")


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("seaweed"), free_ports(1, with_grpc=True)[0])
    store.start()
    store.create_buckets(list(BUCKETS))
    yield store
    store.stop()


@pytest.fixture(scope="session")
def s3_origin(tmp_path_factory):
    """A private S3 bucket as the sweep's origin: data/k0000 ... data/k1999 (tests/sweep_support.py)."""
    origin = start_s3_origin(tmp_path_factory.mktemp("sweep-origin"), ORIGIN_KEYS)
    yield origin
    stop_quickly(origin)


@pytest.fixture(scope="module")
def recording_origin():
    """A scripted origin of the test file's own: its request log holds that file's requests only."""
    origin = ScriptedOrigin().start()
    yield origin
    origin.stop()


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
