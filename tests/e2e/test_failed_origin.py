"""When the origin fails, every S3 client fails: a non-zero exit status and no bytes written
(docs/miss.md, "When the origin fails").

A miss whose origin breaks (a body cut mid-way, a 500, a reset) is answered 424 MirrorFailed,
to its HEAD as to its GET. aws s3 cp, boto3 download_file, s3cmd get and curl -f fail on it.
rclone before v1.72 (Debian 12's 1.60) takes a key whose HEAD fails, whatever the status, for a
folder: it lists `key/`, finds nothing and used to exit 0 having written nothing. The listing of
`key/` that follows a failed HEAD now carries the HEAD's failure (miss.failedheads), so rclone
fails too; a `key/` that is a folder still lists as one.

Real mitmdump with the addon in front of a SigV4 SeaweedFS, the scripted origin breaking, real
clients (one attempt each) whose written files are checked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.clients import (
    RCLONE_REMOTE,
    TIMEOUT,
    Outcome,
    Target,
    aws_cp_file,
    boto3_client,
    boto3_download_file,
    curl,
    rclone_command,
    rclone_copyto,
    rclone_env,
    s3cmd_get,
)
from tests.modes_support import ModeMitmdump
from tests.origin_server import ScriptedOrigin
from tests.support import mirror_rule, running_store, stored, write_rules

BUCKET = "failing-bucket"
KEYS = ("failkey", "failsecret")
ENV = {"AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}
MiB = 1 << 20
CLIENTS = {"rclone copyto": rclone_copyto, "aws s3 cp": aws_cp_file, "boto3 download_file": boto3_download_file,
           "s3cmd get": s3cmd_get, "curl -f": curl}
BREAKS = {  # how the origin breaks: the key's path under the rule's MirrorURL
    "body cut mid-way": "short/{n}.bin",
    "500": "error500/{n}.bin",
    "reset": "reset/{n}.bin",
    "24 MiB body cut mid-way (the miss server)": f"shortsized/{24 * MiB}/{{n}}.bin",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[tuple[ModeMitmdump, object, ScriptedOrigin]]:
    workdir = tmp_path_factory.mktemp("failing")
    origin = ScriptedOrigin().start()
    try:
        with running_store(workdir / "store", [BUCKET], KEYS) as store:
            rules = write_rules(workdir / "rules.json", {BUCKET: [mirror_rule(1, f"{origin.base}/dir1/")]})
            proxy = ModeMitmdump(f"reverse:{store.endpoint}", rules, workdir / "proxy",
                                 {"keep_host_header": "true", "backorigin_origin_timeout": "20"}, env=ENV).start()
            try:
                yield proxy, store, origin
            finally:
                proxy.stop()
    finally:
        origin.stop()


def result(outcome: Outcome) -> tuple[bool, str]:
    """(failed, what it wrote): a failure with nothing written, or with a partial file it reported."""
    return outcome.returncode != 0, "nothing" if outcome.sha256 is None else f"{outcome.size} bytes"


@pytest.mark.parametrize("breaks", list(BREAKS))
def test_every_client_fails_when_the_origin_breaks(setup, breaks, tmp_path, unique):
    proxy, store, _ = setup
    outcomes = {name: client(Target(proxy.url, *KEYS), BUCKET, BREAKS[breaks].format(n=f"{unique}-{n}"), tmp_path / str(n))
                for n, (name, client) in enumerate(CLIENTS.items())}
    assert {name: result(outcome) for name, outcome in outcomes.items()} == {name: (True, "nothing") for name in CLIENTS}, (
        {name: (outcome.returncode, outcome.stderr) for name, outcome in outcomes.items()})
    assert "424" in outcomes["rclone copyto"].stderr
    for n in range(len(CLIENTS)):
        assert stored(store.client(), BUCKET, BREAKS[breaks].format(n=f"{unique}-{n}")) is None


def test_a_folder_named_like_a_failed_key_still_lists(setup, tmp_path, unique):
    """`key/` has objects: after the HEAD of `key` fails, rclone copyto copies the folder, and a
    listing of `key/` shows it; an empty listing of another prefix stays an empty listing."""
    proxy, store, _ = setup
    key = f"error500/{unique}-folder"
    store.client().put_object(Bucket=BUCKET, Key=f"{key}/child.txt", Body=b"child\n")
    target, folder = Target(proxy.url, *KEYS), tmp_path / "folder"
    copied = subprocess.run(rclone_command("copyto", f"{RCLONE_REMOTE}:{BUCKET}/{key}", str(folder)),
                            env=rclone_env(target, tmp_path), capture_output=True, timeout=TIMEOUT)
    assert (copied.returncode, (folder / "child.txt").read_bytes()) == (0, b"child\n"), copied.stderr
    s3 = boto3_client(target)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{key}/", Delimiter="/")
    assert [item["Key"] for item in listed["Contents"]] == [f"{key}/child.txt"]
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}-elsewhere/", Delimiter="/")
