"""Session-wide real components: a SeaweedFS store, a scripted origin, mitmdump with the addon."""

from __future__ import annotations

import uuid

import pytest

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.origin_server import ScriptedOrigin
from tests.support import Mitmdump, mirror_rule, write_rules

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
def origin():
    origin = ScriptedOrigin().start()
    yield origin
    origin.stop()


@pytest.fixture(scope="session")
def rules_file(tmp_path_factory, origin):
    base = origin.base
    return write_rules(
        tmp_path_factory.mktemp("rules") / "rules.json",
        {
            "mirror-bucket": [
                mirror_rule(
                    1, f"{base}/dir1/echo/", "pass/", MirrorPassQueryString=True,
                    MirrorHeaders={"Pass": ["a-header"], "Remove": ["b-header"], "Set": [{"Key": "c-header", "Value": "000"}]},
                ),
                mirror_rule(2, f"{base}/dir1/echo/", "passall/", MirrorHeaders={"PassAll": True, "Remove": ["b-header"]}),
                mirror_rule(3, f"{base}/dir1/", "nofollow/", MirrorFollowRedirect=False),
                # listed before rule 4 on purpose: RuleNumber, not file order, decides
                mirror_rule(5, f"{base}/dir1/"),
                mirror_rule(4, f"{base}/dir2/", "order/"),
            ],
            "suffix-bucket": [mirror_rule(1, f"{base}/dir1/", "images/", ".jpg")],
            "headers-bucket": [
                mirror_rule(1, f"{base}/dir1/echo/", MirrorHeaders={"PassAll": True, "Remove": ["host"]})
            ],
            # a bucket named in the rules but never created: NoSuchBucket must pass through
            "absent-bucket": [mirror_rule(1, f"{base}/dir1/")],
        },
    )


@pytest.fixture(scope="session")
def proxy(tmp_path_factory, store, rules_file):
    """The documented reverse-proxy set-up, shared by the integration tests."""
    proxy = Mitmdump(
        f"reverse:{store.endpoint}", rules_file, tmp_path_factory.mktemp("proxy"),
        {"backorigin_origin_timeout": "1.5"},
    ).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def unique():
    """A fresh key part per test, so tests sharing the store never see each other's objects."""
    return uuid.uuid4().hex[:12]
