"""The sweep's pacing: a token bucket with no burst, and rates given as text; what a listing of
the store spares the sweep from asking key by key."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from backorigin.tools.backfill import Pacer, listed_in_store, parse_rate
from tests.support import book_of, mirror_rule
from tests.sweep_support import FakeListing


def test_pacer_and_rate_text():
    now = [0.0]
    pacer = Pacer(10, clock=lambda: now[0])
    assert [pacer.reserve(1) for _ in range(3)] == [0.0, pytest.approx(0.1), pytest.approx(0.2)]
    now[0] = 5.0  # an idle stretch earns no burst
    assert pacer.reserve(1) == 0.0 and pacer.reserve(1) == pytest.approx(0.1)
    assert parse_rate("50m") == 50 * 1024 * 1024 and parse_rate("512k/s") == 512 * 1024
    with pytest.raises(ValueError):
        parse_rate("fast")


def test_the_store_is_listed_once_under_the_mirror_rules_prefixes(capsys):
    book = book_of("b", [mirror_rule(1, "http://o/a/", "img/"), mirror_rule(2, "http://o/b/", "img/2019/"),
                         mirror_rule(3, "http://o/c/", "doc/"), {"RuleNumber": 4, "Redirect": {"RedirectType": "External"}}])
    store = FakeListing(["img/a.jpg", "img/2019/b.jpg", "doc/c.txt", "other/d", "img/unwanted.jpg"])
    wanted = {"img/a.jpg", "img/2019/b.jpg", "doc/c.txt", "doc/absent.txt", "other/d"}
    assert listed_in_store(store, "b", book, wanted) == {"img/a.jpg", "img/2019/b.jpg", "doc/c.txt"}
    assert store.prefixes == ["doc/", "img/"]  # img/2019/ is inside img/: listed once

    refusing = FakeListing([], ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListObjectsV2"))
    assert listed_in_store(refusing, "b", book, wanted) is None
    assert "cannot list s3://b in the store (store: AccessDenied: no): asking it key by key" in capsys.readouterr().err
