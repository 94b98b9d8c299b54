"""Regenerate tests/data/trial.mitm, the recorded flows behind the replay tests.

    .venv/bin/python tests/data/record_trial.py            # writes tests/data/trial.mitm
    .venv/bin/python tests/data/record_trial.py OUT.mitm   # or somewhere else

Run it from anywhere in the repository (it changes to the root itself). It records for
real: an embedded SeaweedFS store and the scripted origin (tests/origin_server.py) on
loopback ports, and mitmdump with the addon in reverse mode in front of the store, run
as tests.support.Mitmdump does with `-w OUT`. The rules recorded with are RECORD_RULES
below; tests/e2e/test_replay.py and tests/addon/test_pytest_plugin.py replay the file under other rules. One GET each:

    trial-bucket/hit.txt        in the store: a hit, no decision
    trial-bucket/ok/a.txt       a miss, mirrored by RuleNumber 2 (stored, then read back below)
    trial-bucket/missing/b.txt  a miss the origin does not have either: RuleNumber 2, origin-404
    trial-bucket/docs/c.html    a miss redirected by RuleNumber 1 (External, 301)
    trial-bucket/error500/d.txt a miss the origin fails (500): RuleNumber 2, mirror-failed (424)
    trial-other/e.txt           a 404 NoSuchKey in a bucket the recording's rules do not name
    trial-bucket/ok/a.txt       again, once stored: a hit on a mirrored object (x-oss-tag)

Ports, timestamps and request ids change from one recording to the next; the keys,
statuses, bodies and decisions do not. Keep bodies small: the file is checked in.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from backorigin.tools.embedded_store import EmbeddedStore, free_ports  # noqa: E402
from tests.origin_server import ScriptedOrigin  # noqa: E402
from tests.support import Mitmdump, http_get, mirror_rule, wait_for, write_rules  # noqa: E402

BUCKET, OTHER = "trial-bucket", "trial-other"
HIT_BODY = b"already in the store\n"
REQUESTS = ["hit.txt", "ok/a.txt", "missing/b.txt", "docs/c.html", "error500/d.txt"]


def record_rules(origin_base: str) -> dict[str, list[dict]]:
    return {
        BUCKET: [
            {"RuleNumber": 1,
             "Condition": {"KeyPrefixEquals": "docs/", "HttpErrorCodeReturnedEquals": 404},
             "Redirect": {"RedirectType": "External", "HostName": "docs.example.com", "HttpRedirectCode": 301}},
            mirror_rule(2, f"{origin_base}/dir1/"),
        ],
    }


def record(out: Path) -> list[tuple[str, int]]:
    """Record the trial into `out`; returns (path, status) per request, for the log."""
    os.chdir(REPO)  # Mitmdump runs `-s addon/script.py` from the repository root
    work = Path(tempfile.mkdtemp(prefix="record-trial-"))
    store = EmbeddedStore(work / "seaweed", free_ports(1, with_grpc=True)[0])
    origin = ScriptedOrigin().start()
    proxy = None
    answers: list[tuple[str, int]] = []
    try:
        store.start()
        store.create_buckets([BUCKET, OTHER])
        s3 = store.client()
        s3.put_object(Bucket=BUCKET, Key="hit.txt", Body=HIT_BODY, ContentType="text/plain")
        rules = write_rules(work / "record-rules.json", record_rules(origin.base))
        partial = work / "trial.mitm"
        proxy = Mitmdump(f"reverse:{store.endpoint}", rules, work / "proxy",
                         {"backorigin_origin_timeout": "2"}, extra_args=["-w", str(partial)]).start()
        paths = [f"/{BUCKET}/{key}" for key in REQUESTS] + [f"/{OTHER}/e.txt"]
        for path in paths:
            answers.append((path, http_get(proxy.url + path)[0]))
        wait_for(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="ok/a.txt").get("KeyCount"))
        answers.append((f"/{BUCKET}/ok/a.txt", http_get(f"{proxy.url}/{BUCKET}/ok/a.txt")[0]))
        status = proxy.stop()
        if status != 0:
            raise RuntimeError(f"mitmdump exited with {status}:\n{proxy.log()}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(partial, out)  # only a finished recording replaces the checked-in one
    finally:
        if proxy is not None:
            proxy.stop()
        origin.stop()
        store.stop()
        shutil.rmtree(work, ignore_errors=True)
    return answers


def main(argv: list[str]) -> int:
    out = Path(argv[1]).resolve() if len(argv) > 1 else REPO / "tests" / "data" / "trial.mitm"
    for path, status in record(out):
        print(f"{status} {path}")
    print(f"{out}: {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
