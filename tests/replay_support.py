"""The trial recording (tests/data/trial.mitm, made by tests/data/record_trial.py) and rules
unlike the ones it was recorded with, for the replay tests in every tier."""

from __future__ import annotations

from tests.data.record_trial import BUCKET, OTHER
from tests.support import DATA, mirror_rule

TRIAL = DATA / "trial.mitm"
# the recording, in order (see tests/data/record_trial.py)
PATHS = [f"/{BUCKET}/{key}" for key in ("hit.txt", "ok/a.txt", "missing/b.txt", "docs/c.html", "error500/d.txt")] + [
    f"/{OTHER}/e.txt", f"/{BUCKET}/ok/a.txt"]


def new_rules(origin_base: str) -> dict[str, list[dict]]:
    """Rules unlike the recording's: other origins, a redirect in place of a mirror, a
    bucket the recording had no rules for, none for docs/ (the recording redirected it)."""
    return {
        BUCKET: [
            mirror_rule(1, f"{origin_base}/replay-new/", "missing/"),
            {"RuleNumber": 2, "Condition": {"KeyPrefixEquals": "error500/"},
             "Redirect": {"RedirectType": "External", "HostName": "errors.example.com", "HttpRedirectCode": 307}},
            mirror_rule(3, f"{origin_base}/replay-new/", "ok/"),
        ],
        OTHER: [{"RuleNumber": 1, "Condition": {"HttpErrorCodeReturnedEquals": 404},
                 "Redirect": {"RedirectType": "AliCDN", "HostName": "cdn.example.com"}}],
    }


def expected_redecisions(origin_base: str) -> dict[str, dict]:
    """What the new rules decide for the recorded 404s (and for rule 2, which needs no 404)."""
    return {
        f"/{BUCKET}/missing/b.txt": dict(bucket=BUCKET, key="missing/b.txt", action="mirror", rule=1, outcome="replayed",
                                         origin_url=f"{origin_base}/replay-new/missing/b.txt", origin_status=None),
        f"/{BUCKET}/error500/d.txt": dict(action="external", rule=2, outcome="replayed",
                                          location="http://errors.example.com/error500/d.txt"),
        f"/{OTHER}/e.txt": dict(bucket=OTHER, key="e.txt", action="alicdn", rule=1, outcome="replayed",
                                location="http://cdn.example.com/e.txt"),
    }
