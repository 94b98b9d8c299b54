"""What a GET or HEAD does under the rules (plan_get), and the store's answer as the rules read it."""

from __future__ import annotations

import re

import pytest
from mitmproxy.test import tutils

from backorigin.decision import Outcome
from backorigin.rules import plan
from backorigin.rules.plan import Act, covered_by_mirror, plan_get
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import error_body
from tests.support import book_of

MIRROR = {"RedirectType": "Mirror", "MirrorURL": "http://o/"}
BOOK = book_of("b", [
    {"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "a/"}, "Redirect": MIRROR},
    {"RuleNumber": 2, "Condition": {"KeyPrefixEquals": ""}, "Redirect": {"RedirectType": "External", "HostName": "x.com"}},
    {"RuleNumber": 3, "Condition": {"HttpErrorCodeReturnedEquals": 500}, "Redirect": {"RedirectType": "External"}},
])


def get(key: str, method: str = "GET"):
    return tutils.treq(path=f"/b/{key}".encode(), method=method.encode())


def number(decided):
    return decided.rule.RuleNumber if decided.rule else None


def test_before_the_store_is_asked_only_a_redirect_without_a_status_condition_decides():
    assert plan_get(BOOK, ObjectRef("b", "a/x"), get("a/x"), None).act is Act.ASK_STORE  # rule 1 needs the 404 first
    decided = plan_get(BOOK, ObjectRef("b", "z"), get("z"), None)
    assert decided.act is Act.REDIRECT and number(decided) == 2
    assert plan_get(BOOK, ObjectRef("other", "z"), get("z"), None).act is Act.STORE


def test_after_the_store_the_first_rule_for_the_request_and_the_status_decides():
    mirrored = plan_get(BOOK, ObjectRef("b", "a/x"), get("a/x"), 404)
    assert mirrored.act is Act.MIRROR and number(mirrored) == 1
    assert mirrored.origin is not None and mirrored.origin.url == "http://o/a/x"
    assert number(plan_get(BOOK, ObjectRef("b", "a/x"), get("a/x"), 200)) == 2
    assert number(plan_get(BOOK, ObjectRef("b", "a/x"), get("a/x", "HEAD"), 404, mirror_heads=False)) == 2
    assert number(plan_get(BOOK, ObjectRef("b", "a/x"), get("a/x", "HEAD"), 404, mirror_heads=True)) == 1
    assert plan_get(book_of("b", [{"RuleNumber": 1, "Redirect": MIRROR}]), ObjectRef("b", "k"), get("k"), 200).act is Act.STORE


def test_a_mirror_rule_keeps_the_404_for_a_delete_marker_a_tombstone_and_an_unsafe_key_in_that_order():
    ref = ObjectRef("b", "a/x")
    marker = plan_get(BOOK, ref, get("a/x"), 404, delete_marker=True, deleted=True)
    assert marker.act is Act.KEEP_404 and marker.outcome is Outcome.DELETE_MARKER
    deleted = plan_get(BOOK, ObjectRef("b", "a/../x"), get("a/../x"), 404, deleted=True)
    assert deleted.act is Act.KEEP_404 and deleted.outcome is Outcome.DELETED
    unsafe = plan_get(BOOK, ObjectRef("b", "a/../x"), get("a/../x"), 404)
    assert unsafe.act is Act.KEEP_404 and unsafe.outcome is Outcome.UNSAFE_KEY and "'..'" in unsafe.detail
    assert number(unsafe) == 1


def test_only_keys_a_mirror_rule_covers_can_have_tombstones():
    book = book_of("b", [{"RuleNumber": 1, "Condition": {"KeyPrefixEquals": "a/", "KeySuffixEquals": ".jpg"}, "Redirect": MIRROR}])
    assert covered_by_mirror(book, ObjectRef("b", "a/x.jpg"))
    assert not covered_by_mirror(book, ObjectRef("b", "a/x.png")) and not covered_by_mirror(book, ObjectRef("c", "a/x.jpg"))


# the store's answer, as the rules read it ----------------------------------------------------


def test_no_such_key_is_told_apart_from_no_such_bucket():
    body = error_body("NoSuchKey", "m", ObjectRef("b", "k"), "id")
    assert plan.rules_status("GET", 404, body) == 404
    other = error_body("NoSuchBucket", "m", ObjectRef("b", "k"), "id")
    assert plan.rules_status("GET", 404, other) is None
    assert plan.rules_status("HEAD", 404, b"") == 404  # a HEAD has no body to tell
    assert plan.rules_status("GET", 404, b"", unrecorded_replay=True) == 404
    assert plan.rules_status("GET", 403, body) == 403


@pytest.mark.parametrize("status, present", [(200, True), (206, True), (304, True), (412, True), (416, True),
                                             (404, False), (403, False), (500, False), (301, False)])
def test_what_shows_that_the_store_has_the_object(status, present):
    assert plan.shows_object(status) is present


def test_only_access_denied_may_hide_a_miss_and_only_when_asked():
    denied = error_body("AccessDenied", "m", ObjectRef("b", "k"), "id")
    forged = error_body("SignatureDoesNotMatch", "m", ObjectRef("b", "k"), "id")
    assert plan.may_hide_a_miss(403, denied, denied_is_miss=True)
    assert not plan.may_hide_a_miss(403, denied, denied_is_miss=False)
    assert not plan.may_hide_a_miss(403, forged, denied_is_miss=True)
    assert not plan.may_hide_a_miss(404, denied, denied_is_miss=True)


def test_a_delete_marker_is_read_from_the_stores_headers():
    assert plan.is_delete_marker((("X-Amz-Delete-Marker", " True "),))
    assert not plan.is_delete_marker((("x-amz-delete-marker", "false"),)) and not plan.is_delete_marker(())


def test_a_replayed_flow_carries_the_store_status_it_was_recorded_with():
    assert plan.recorded_status(None) is None
    assert plan.recorded_status({"store_status": 500, "action": "redirect"}) == 500
    assert plan.recorded_status({"action": "mirror"}) == 404  # recorded before store_status was kept
    assert plan.recorded_status({"action": "redirect"}) is None


@pytest.mark.parametrize("redirect, field", [
    ({"MirrorAuth": {"AuthType": "S3V4", "Region": "r", "AccessKeyId": "AK", "AccessKeySecret": "SK"}}, "Redirect.MirrorAuth"),
    ({"MirrorHeaders": {"Set": [{"Key": "x-token", "Value": "secret"}]}}, "Redirect.MirrorHeaders.Set (x-token)"),
])
def test_403_as_a_miss_refuses_every_rule_that_reaches_a_private_origin(redirect, field):
    from backorigin.rules.model import RulesError
    from backorigin.rules.plan import refuse_private_origins

    book = book_of("b", [{"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/", **redirect}}])
    with pytest.raises(RulesError, match=rf'bucket "b": RuleNumber 1: field {re.escape(field)}'):
        refuse_private_origins(book)
    refuse_private_origins(book_of("b", [{"RuleNumber": 1, "Redirect": {"RedirectType": "Mirror", "MirrorURL": "http://o/",
                                                                        "MirrorHeaders": {"Pass": ["x-token"]}}}]))
