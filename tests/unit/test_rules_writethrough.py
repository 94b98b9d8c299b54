"""WriteThrough in the rules: off by default, refused unless every Mirror rule of the bucket is a
signed S3 origin (tests/data/bad-rules/write-through-*.json hold the refusals), where a key's copy
lives at the origin, the secrets the worker gets, and what explain and export-rules say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backorigin.rules.model import RulesError
from backorigin.rules.parsing import parse_rules
from backorigin.rules.writethrough import OriginCopy, origin_copy, secrets
from backorigin.s3.addressing import ObjectRef
from tests.support import run_cli

AUTH = {"AuthType": "S3V4", "Region": "eu-west-3", "AccessKeyId": "OLDKEY", "AccessKeySecret": "old-secret"}
OTHER = {**AUTH, "AccessKeyId": "LOGKEY", "AccessKeySecret": "log-secret"}


def rules(write_through: object = True) -> dict:
    bucket: dict = {"Name": "photos", "RoutingRules": [
        {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "logs/"},
         "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://old:9000/logs-bucket/archive/", "MirrorAuth": OTHER}},
        {"RuleNumber": 2, "Condition": {"KeySuffixEquals": ".tmp"}, "Redirect": {"RedirectType": "External", "HostName": "x.example"}},
        {"RuleNumber": 3, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "https://old:9000/photos/", "MirrorAuth": AUTH}},
    ]}
    if write_through is not None:
        bucket["WriteThrough"] = write_through
    return {"Buckets": [bucket, {"Name": "other", "RoutingRules": bucket["RoutingRules"][2:]}]}


def book(document: dict):
    return parse_rules(json.dumps(document), "rules.json")


def test_write_through_is_off_unless_a_bucket_says_so():
    assert not book(rules(None)).writes_through("photos")
    assert not book(rules(False)).writes_through("photos")
    assert book(rules("true")).writes_through("photos")  # as OSS's SDKs write booleans
    assert not book(rules(True)).writes_through("other")


def test_a_keys_copy_is_where_the_first_mirror_rule_covering_it_reads_it():
    found = book(rules())
    assert origin_copy(found, ObjectRef("photos", "logs/2024/a.gz")) == OriginCopy(
        "http://old:9000", "logs-bucket", "archive/logs/2024/a.gz", "eu-west-3", "LOGKEY")
    # a redirect rule before it changes nothing: writes are not GETs
    assert origin_copy(found, ObjectRef("photos", "cat.tmp")) == OriginCopy("https://old:9000", "photos", "cat.tmp", "eu-west-3", "OLDKEY")
    assert origin_copy(found, ObjectRef("other", "cat.jpg")) is None  # no WriteThrough
    assert origin_copy(found, ObjectRef("other", "cat.jpg"), written_through=False) is not None  # verify --check origin


def test_a_key_no_mirror_rule_covers_is_not_written_through():
    document = rules()
    document["Buckets"][0]["RoutingRules"] = document["Buckets"][0]["RoutingRules"][:1]
    assert origin_copy(book(document), ObjectRef("photos", "cat.jpg")) is None


def test_the_worker_gets_the_secrets_of_every_s3_origin_the_rules_sign_for():
    """Writes journaled before WriteThrough was turned off are still applied: their origins' keys stay known."""
    expected = {("http://old:9000", "LOGKEY"): "log-secret", ("https://old:9000", "OLDKEY"): "old-secret"}
    assert secrets(book(rules())) == expected == secrets(book(rules(False)))
    web = rules(False)
    web["Buckets"][0]["RoutingRules"][0]["Redirect"]["MirrorURL"] = "http://www.example/"  # not an S3 bucket: never written to
    assert secrets(book(web)) == {("https://old:9000", "OLDKEY"): "old-secret"}


def test_explain_says_where_a_keys_writes_go(tmp_path: Path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules()))
    done = run_cli("explain", "http://store:8333/photos/logs/a.gz", "--rules", path)
    assert done.returncode == 0, done.stderr
    assert ("writes (PUT, copy, multipart upload, DELETE): applied to the origin too, s3://logs-bucket/archive/logs/a.gz at "
            "http://old:9000 (WriteThrough; signed with MirrorAuth LOGKEY)") in done.stdout
    assert "old-secret" not in done.stdout and "log-secret" not in done.stdout
    assert "writes" not in run_cli("explain", "http://store:8333/other/a.gz", "--rules", path).stdout


def test_export_leaves_write_through_out_with_a_warning(tmp_path: Path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules()))
    done = run_cli("export-rules", "--bucket", "photos", path)
    assert done.returncode == 0 and "WriteThrough" not in done.stdout and "<RoutingRule>" in done.stdout
    assert (f"warning: {path}: WriteThrough left out of the XML: backorigin only (every write through the proxy is applied "
            "to the bucket's S3 origin too: docs/write-through.md); OSS has no such field") in done.stderr.splitlines()
    assert "WriteThrough" not in run_cli("export-rules", "--bucket", "other", path).stderr


def patterns(mirror_url: str, write_through: bool = True) -> dict:
    """One pattern entry "logs-*" mirroring each bucket from its namesake at the old store."""
    return {"Buckets": [{"Name": "logs-*", "WriteThrough": write_through, "RoutingRules": [
        {"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": mirror_url, "MirrorAuth": AUTH}}]}]}


def test_a_pattern_entry_writes_each_bucket_through_to_its_namesake():
    by_path, by_host = book(patterns("http://old:9000/${bucket}/in/")), book(patterns("https://${bucket}.old.example/in/"))
    assert by_path.writes_through("logs-a") and by_host.writes_through("logs-b") and not by_path.writes_through("other")
    assert origin_copy(by_path, ObjectRef("logs-a", "k")) == OriginCopy("http://old:9000", "logs-a", "in/k", "eu-west-3", "OLDKEY")
    copy = origin_copy(by_host, ObjectRef("logs-b.2", "k"))  # a name with dots stays in the host
    assert copy == OriginCopy("https://${bucket}.old.example", "logs-b.2", "in/k", "eu-west-3", "OLDKEY")
    assert copy.where == "https://logs-b.2.old.example/in/k" and copy.server == "https://logs-b.2.old.example"
    assert origin_copy(by_host, ObjectRef("other", "k")) is None and origin_copy(by_host, ObjectRef("other", "k"), False) is None


def test_the_worker_gets_a_pattern_entrys_secret_for_its_own_endpoint_only():
    """The endpoint a change names is the secret's key: a host with ${bucket} keeps it, so the
    secret signs for that rule's hosts (BUCKET.old.example), never for the bare old.example."""
    assert secrets(book(patterns("http://old:9000/${bucket}/"))) == {("http://old:9000", "OLDKEY"): "old-secret"}
    assert secrets(book(patterns("https://${bucket}.old.example/", False))) == {("https://${bucket}.old.example", "OLDKEY"): "old-secret"}


def test_bucket_in_the_host_writes_through_only_as_the_hosts_first_label():
    for write_through in (True, False):  # any rule: the bucket a client names must not choose the host
        with pytest.raises(RulesError, match=r"RuleNumber 1: field Redirect.MirrorURL: 'https://www-\$\{bucket\}.old.example/': "
                                             r"\$\{bucket\} goes in the host only as its whole first label"):
            book(patterns("https://www-${bucket}.old.example/", write_through))
    exact = book({"Buckets": [{"Name": "photos", "WriteThrough": True, "RoutingRules": patterns("http://${bucket}.old/")[
        "Buckets"][0]["RoutingRules"]}]})  # an exact entry's ${bucket} is filled in when the file is read
    assert origin_copy(exact, ObjectRef("photos", "k")) == OriginCopy("http://${bucket}.old", "photos", "k", "eu-west-3", "OLDKEY")


def test_explain_names_the_buckets_own_host_for_a_pattern_with_the_bucket_in_the_host(tmp_path: Path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(patterns("https://${bucket}.old.example/")))
    done = run_cli("explain", "http://store:8333/logs-a/k", "--rules", path)
    assert done.returncode == 0, done.stderr
    assert ("writes (PUT, copy, multipart upload, DELETE): applied to the origin too, s3://logs-a/k at "
            "https://logs-a.old.example (WriteThrough; signed with MirrorAuth OLDKEY)") in done.stdout
