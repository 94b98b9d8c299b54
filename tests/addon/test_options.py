"""Options are checked where they are set: a bad value is refused with a message naming the
option, and what was in force stays."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions

from backorigin.miss.leasestore import LeasePlace


@pytest.mark.parametrize("option, value, message", [
    ("backorigin_origin_timeout", "soon", "backorigin_origin_timeout: 'soon' is not a positive"),
    ("backorigin_origin_read_timeout", "-1", "backorigin_origin_read_timeout: '-1' is not a positive"),
    ("backorigin_max_rules", 21, "outside 1..20"),
    ("backorigin_max_inline", "big", "backorigin_max_inline: 'big' is not a size"),
    ("backorigin_head_on_miss", "maybe", "backorigin_head_on_miss: 'maybe' is not one of 'object', 'oss'"),
    ("backorigin_deletes", "sometimes", "backorigin_deletes: 'sometimes' is not one of 'stick', 'resurrect'"),
    ("backorigin_writeback_workers", 0, "backorigin_writeback_workers: must be at least 1"),
    ("backorigin_tombstones", "s3://bucket/no-slash", "backorigin_tombstones: 's3://bucket/no-slash': the prefix must end"),
    ("backorigin_rules", "/nonexistent/rules.json", "cannot read the rules file"),
    ("backorigin_leases", "s3://leases/fleet", "backorigin_leases: 's3://leases/fleet': the prefix must end with '/'"),
    ("backorigin_leases", "leases", "backorigin_leases: 'leases' is not s3://BUCKET/PREFIX/"),
    ("backorigin_lease_ttl", "0", "backorigin_lease_ttl: '0' is not a positive"),
    ("backorigin_lease_wait", "later", "backorigin_lease_wait: 'later' is not a positive"),
])
def test_a_bad_value_is_refused_and_the_rules_in_force_stay(tctx, addon, rules_file, option, value, message):
    with pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, **{option: value})
    assert addon.context.rulebook.source == str(rules_file)


def test_the_spool_cannot_move_while_running(tctx, addon, tmp_path):
    with pytest.raises(exceptions.OptionsError, match="cannot change while running"):
        tctx.configure(addon, backorigin_spool_dir=str(tmp_path / "elsewhere"))


def test_the_lease_options_reach_the_mirrors_leases(tctx, addon):
    leases = addon.parts.leases
    assert leases.settings.place == LeasePlace("backorigin-leases") and "pid" in leases.settings.owner  # on by default
    tctx.configure(addon, backorigin_lease_ttl="12", backorigin_lease_wait="0", backorigin_leases="bucket")
    assert (leases.settings.place, leases.settings.ttl, leases.settings.wait) == (LeasePlace(None), 12.0, 0.0)
    tctx.configure(addon, backorigin_leases="off")
    assert leases.settings.place is None
