"""Fixtures every tier may use: the scripted origin (an HTTP server in this process), a rules
file pointing at it, and a fresh key part per test. The real store and mitmdump are in
tests/e2e/conftest.py."""

from __future__ import annotations

import uuid

import pytest

from tests.origin_server import ScriptedOrigin
from tests.support import mirror_rule, write_rules


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


@pytest.fixture
def unique():
    """A fresh key part per test, so tests sharing the store never see each other's objects."""
    return uuid.uuid4().hex[:12]
