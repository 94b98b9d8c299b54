"""The fleet's leases, the parts without a store: where a lease lives, when one has run out, the
option that places them. Leases against a real store: tests/e2e/test_leases.py and test_fleet.py."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backorigin.miss.leases import Leases, Watch
from backorigin.miss.leasestore import DEFAULT_PLACE, IN_BUCKET_PREFIX, LeasePlace, Seen, lease_place


@given(st.text(min_size=1, max_size=1024))
def test_every_key_has_a_lease_of_fixed_length_of_its_own(key):
    shared, own = LeasePlace("backorigin-leases", "p/"), LeasePlace(None)
    bucket, name = shared.of("photos", key)
    assert bucket == "backorigin-leases" and name.startswith("p/") and len(name) == 2 + 64
    assert shared.of("videos", key) != (bucket, name), "the bucket is part of a shared place's name"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    assert own.of("photos", key) == ("photos", IN_BUCKET_PREFIX + digest), "at the root: no folder is left behind"


def test_only_in_bucket_leases_are_left_out_of_the_buckets_listing():
    assert LeasePlace(None).prefix_in("photos") == IN_BUCKET_PREFIX
    assert LeasePlace("backorigin-leases").prefix_in("photos") is None
    assert Leases().prefix_in("photos") is None  # off until configured


@pytest.mark.parametrize(("age", "watched", "ran_out"), [
    (29.0, 99.0, False),  # the store's clock decides when it has a Date
    (30.0, 99.0, False),  # HTTP dates have whole seconds: 30 may be 29.1, so not yet
    (31.0, 0.0, True),
    (None, 29.0, False),  # no Date: how long this proxy has watched the same version
    (None, 30.5, True),
])
def test_a_lease_runs_out_only_once_its_time_has_surely_passed(age, watched, ran_out):
    seen = Seen('"etag"', None, "proxy-a", 30.0, age)
    assert seen.ran_out(watched) is ran_out
    assert seen.left(watched) == 30.0 - (age if age is not None else watched)


def test_watching_starts_again_for_each_new_version_and_tells_a_new_holder():
    watch = Watch()
    first = Seen('"one"', None, "a", 30.0, 1.0)
    assert watch.see(first) and not watch.see(first)
    watch.since -= 10
    assert not watch.see(Seen('"two"', None, "a", 30.0, 0.0)) and watch.seconds < 1, "a renewal: watched anew"
    assert watch.see(Seen('"three"', None, "b", 30.0, 0.0)), "another proxy took it over"


@pytest.mark.parametrize(("value", "place"), [
    (DEFAULT_PLACE, LeasePlace("backorigin-leases", "")),
    ("s3://leases/fleet/", LeasePlace("leases", "fleet/")),
    ("bucket", LeasePlace(None)),
    ("off", None),
])
def test_the_option_places_leases(value, place):
    assert lease_place(value) == place
