"""One entry for many buckets: patterns ("*", "logs-*") and ${bucket} in MirrorURL / MirrorURLSlave.
Which entry applies, what the origin is asked, what explain and export-rules say, and that looking
an entry up does not grow with the number of entries."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.test import tutils

from backorigin.rules.buckets import is_bucket_name, pattern_prefix
from backorigin.rules.convert import bucket_rules, rules_to_oss_xml
from backorigin.rules.explain import explain
from backorigin.rules.model import RuleBook, RulesError
from backorigin.rules.parsing import parse_rules
from backorigin.rules.plan import Act, covered_by_mirror, plan_get, refuse_private_origins
from backorigin.rules.targets import OriginBucket
from backorigin.s3.addressing import ObjectRef
from tests.support import mirror_rule, run_cli, write_rules


def book(entries: dict[str, list[dict]], max_rules: int = 20) -> RuleBook:
    return parse_rules(json.dumps({"Buckets": [{"Name": n, "RoutingRules": r} for n, r in entries.items()]}), "rules.json",
                       max_rules)


def origin_url(rules: RuleBook, bucket: str, key: str = "a/b.txt") -> str | None:
    planned = plan_get(rules, ObjectRef(bucket, key), tutils.treq(path=f"/{bucket}/{key}".encode()), 404)
    return planned.origin.url if planned.act is Act.MIRROR and planned.origin else None


MANY = book({
    "*": [mirror_rule(1, "http://old-store:9000/${bucket}/")],
    "logs-*": [mirror_rule(1, "http://logs-origin/${bucket}/archive/", MirrorURLSlave="http://${bucket}.backup.example/")],
    "logs-eu-*": [mirror_rule(1, "http://eu-origin/${bucket}/")],
    "logs-eu-special": [mirror_rule(1, "http://special/${bucket}/")],
})


# -- which entry -----------------------------------------------------------------------------

@pytest.mark.parametrize(("bucket", "entry"), [
    ("photos", "*"),
    ("logs-2024", "logs-*"),
    ("logs-eu-2024", "logs-eu-*"),  # the longest prefix wins
    ("logs-eu-special", "logs-eu-special"),  # an exact name wins over every pattern
    ("logs-eu-specials", "logs-eu-*"),
    ("logs", "*"),  # "logs-*" needs the '-'
])
def test_an_exact_name_wins_then_the_longest_prefix(bucket, entry):
    assert MANY.entry_for(bucket) == entry


@pytest.mark.parametrize("name", ["ab", "Photos", "photos_2024", "-photos", "photos-", "a..b", "192.168.0.1", "a" * 64,
                                  "x/y", "photos%2F..", "ph@tos", "ph tos", "phötos", ""])
def test_a_pattern_never_applies_to_a_name_s3_does_not_allow(name):
    assert not is_bucket_name(name)
    assert MANY.entry_for(name) is None and MANY.rules_for(name) == ()


def test_without_patterns_only_exact_names_have_rules():
    only = book({"photos": [mirror_rule(1, "http://o/")]})
    assert only.entry_for("photos") == "photos" and only.rules_for("other") == () and only.entry_for("other") is None


@pytest.mark.parametrize(("name", "prefix"), [("*", ""), ("logs-*", "logs-"), ("a.b*", "a.b"), ("photos", None)])
def test_pattern_prefixes(name, prefix):
    assert pattern_prefix(name) == prefix


@pytest.mark.parametrize("name", ["*logs", "lo*gs*", "**", "Logs-*", "-logs*", "logs_*"])
def test_misplaced_stars_and_impossible_prefixes_are_refused(name):
    with pytest.raises(RulesError, match=re.escape(f'bucket "{name}": field Name: ')):
        book({name: [mirror_rule(1, "http://o/")]})


def test_a_pattern_listed_twice_is_refused():
    text = json.dumps({"Buckets": [{"Name": "logs-*", "RoutingRules": [mirror_rule(1, "http://o/")]}] * 2})
    with pytest.raises(RulesError, match='bucket "logs-\\*": the bucket is listed twice'):
        parse_rules(text, "rules.json")


# -- ${bucket} -------------------------------------------------------------------------------

def test_bucket_is_filled_into_the_origin_url_host_and_path():
    assert origin_url(MANY, "photos") == "http://old-store:9000/photos/a/b.txt"
    planned = plan_get(MANY, ObjectRef("logs-2024", "k"), tutils.treq(path=b"/logs-2024/k"), 404)
    assert planned.origin is not None
    assert planned.origin.url == "http://logs-origin/logs-2024/archive/k"
    assert planned.origin.fallback_url == "http://logs-2024.backup.example/k"
    assert planned.origin.hosts == {"logs-origin", "logs-2024.backup.example"}  # the rule's own hosts, as filled in


def test_an_exact_entry_has_its_own_name_filled_in_when_read():
    rules = book({"photos": [mirror_rule(1, "http://old/${bucket}/")]})
    assert rules.buckets["photos"][0].Redirect.MirrorURL == "http://old/photos/"


def test_an_s3_origin_from_a_pattern_is_the_bucket_of_the_same_name():
    where = OriginBucket.of(MANY.rules_for("photos")[0])
    assert (where.endpoint, where.bucket, where.base) == ("http://old-store:9000", "photos", "")


@given(st.from_regex(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", fullmatch=True).filter(is_bucket_name))
def test_any_bucket_name_stays_inside_the_host_and_path_it_fills(name):
    rules = book({"*": [mirror_rule(1, "https://${bucket}.s3.example.com/", MirrorURLSlave="http://old:9000/${bucket}/")]})
    action = rules.rules_for(name)[0].Redirect
    primary, secondary = urlsplit(action.MirrorURL), urlsplit(action.MirrorURLSlave)
    assert primary.hostname == f"{name}.s3.example.com" and primary.path == "/" and primary.port is None
    assert secondary.hostname == "old" and secondary.path == f"/{name}/"


def test_hit_path_questions_are_answered_for_pattern_buckets():
    assert MANY.may_act_on("photos", 404) and not MANY.may_act_on("photos", 200)
    assert covered_by_mirror(MANY, ObjectRef("logs-eu-2024", "x"))
    assert not covered_by_mirror(MANY, ObjectRef("NotABucket", "x"))


def test_private_origins_behind_a_pattern_are_refused_with_403_is_miss():
    auth = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "k", "AccessKeySecret": "s"}
    with pytest.raises(RulesError, match='bucket "\\*": RuleNumber 1: field Redirect.MirrorAuth'):
        refuse_private_origins(book({"*": [mirror_rule(1, "http://old/${bucket}/", MirrorAuth=auth)]}))


# -- explain, export -------------------------------------------------------------------------

def test_explain_says_which_entry_applied():
    assert explain(MANY, "http://proxy/logs-eu-2024/x").startswith("bucket 'logs-eu-2024' (the entry 'logs-eu-*'), key 'x':")
    assert explain(MANY, "http://proxy/logs-eu-special/x").startswith("bucket 'logs-eu-special' (its own entry)")
    assert "GET http://eu-origin/logs-eu-2024/x" in explain(MANY, "http://proxy/logs-eu-2024/x")
    assert "has no rules" in explain(MANY, "http://proxy/Upper/x")


def test_export_refuses_a_pattern_and_fills_in_a_bucket_it_applies_to():
    with pytest.raises(RulesError, match='"logs-\\*" is a pattern; OSS has no bucket patterns'):
        bucket_rules(MANY, "logs-*")
    rules, warnings = bucket_rules(MANY, "logs-2024")
    assert warnings == ['bucket "logs-2024" has no entry of its own: the rules of the pattern entry "logs-*" are exported '
                        "as they apply to it"]
    xml, _ = rules_to_oss_xml(rules)
    assert "<MirrorURL>http://logs-origin/logs-2024/archive/</MirrorURL>" in xml and "${bucket}" not in xml
    assert bucket_rules(MANY, "logs-eu-special").warnings == []


def test_cli_export_of_a_pattern_matched_bucket(tmp_path):
    path = write_rules(tmp_path / "rules.json", {"*": [mirror_rule(1, "http://old-store:9000/${bucket}/")]})
    done = run_cli("export-rules", "--bucket", "photos", path)
    assert done.returncode == 0 and "<MirrorURL>http://old-store:9000/photos/</MirrorURL>" in done.stdout
    assert 'the rules of the pattern entry "*" are exported as they apply to it' in done.stderr
    refused = run_cli("export-rules", "--bucket", "*", path)
    assert refused.returncode != 0 and "OSS has no bucket patterns" in refused.stderr


# -- the cost of a look-up ---------------------------------------------------------------------

def seconds_per_lookup(rules: RuleBook, buckets: list[str], rounds: int = 5, repeat: int = 20) -> float:
    """The best of `rounds` timings of rules_for over `buckets` (the machine may be busy)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            for bucket in buckets:
                rules.rules_for(bucket)
                rules.entry_for(bucket)
        best = min(best, time.perf_counter() - started)
    return best / (repeat * len(buckets))


def test_a_lookup_costs_the_same_with_1000_entries_of_20_rules_as_with_a_few():
    twenty = book({"x": [mirror_rule(n, f"http://o{n}/${{bucket}}/", prefix=f"p{n}/") for n in range(1, 21)]}).buckets["x"]
    # patterns of every prefix length up to 40 in both books: the most probes a look-up makes depends on the
    # lengths (at most 63, the longest bucket name), never on how many entries there are
    few = RuleBook("few", {"bucket-0000": twenty}, {f"{'p' * length}-*": twenty for length in range(1, 41)})
    many = RuleBook("many", {f"bucket-{n:04d}": twenty for n in range(1000)},
                    {f"{'p' * (n % 40 + 1)}{n:03d}-*": twenty for n in range(1000)})
    asked_few = ["bucket-0000", f"{'p' * 21}-x", "unmatched-bucket"]
    asked_many = ["bucket-0500", f"{'p' * 21}020-x", "unmatched-bucket"]
    assert many.entry_for(asked_many[1]) == f"{'p' * 21}020-*" and few.entry_for(asked_few[1]) == f"{'p' * 21}-*"
    ratios = [seconds_per_lookup(many, asked_many) / seconds_per_lookup(few, asked_few) for _ in range(3)]
    assert min(ratios) < 2, ratios  # side by side, the best of three: a ratio, never an absolute speed
