"""Every S3 client gets every missing object: right bytes, any size, fetched once.

Real clients (tests/clients.py: the AWS CLI, boto3, s3cmd, rclone, curl) download a key the
store does not have, through the documented reverse-proxy set-up in front of a SigV4-only
SeaweedFS. Each case checks what the client wrote against the origin's body, that the origin
was asked exactly once (one GET, no HEAD), and that the object landed in the store intact.

The same clients first read an object that is in the store, straight from the store: when
one of those fails, the harness is wrong, not the proxy.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.clients import (
    CLIENTS,
    Client,
    Outcome,
    Target,
    range_for,
    sized_sha256,
    stored_sha256,
)
from tests.modes_support import ModeMitmdump
from tests.origin_server import ScriptedOrigin, sized_body
from tests.support import mirror_rule, running_store, stored, wait_for, write_rules

BUCKET = "clients-bucket"
KEYS = ("clientskey", "clientssecret")  # the store's only identity: clients and write-backs both sign
MiB = 1 << 20
SIZES = {"1KiB": 1 << 10, "30MiB": 30 * MiB, "100MiB+": 100 * MiB + 4321}
SANITY_SIZES = {"1KiB": 1 << 10, "30MiB": 30 * MiB}  # one GET, and s3transfer's ranged parts


@pytest.fixture(scope="module")
def signed_store(tmp_path_factory):
    """A store that enforces SigV4, as most real ones do."""
    with running_store(tmp_path_factory.mktemp("clients-store"), [BUCKET], KEYS) as store:
        yield store


@pytest.fixture(scope="module")
def clients_proxy(tmp_path_factory, signed_store, recording_origin):
    """The README's reverse-proxy command. keep_host_header: SigV4 signs Host. The store's
    keys in mitmdump's environment: write-backs sign with boto3's default credential chain."""
    workdir = tmp_path_factory.mktemp("clients-proxy")
    rules = write_rules(workdir / "rules.json", {BUCKET: [mirror_rule(1, f"{recording_origin.base}/dir1/")]})
    proxy = ModeMitmdump(
        f"reverse:{signed_store.endpoint}", rules, workdir,
        {"keep_host_header": "true", "backorigin_origin_timeout": "60"},
        env={"AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"},
    ).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def existing_objects(signed_store) -> dict[int, str]:
    """The sized bodies put into the store with boto3, by size: what the sanity tests read."""
    s3 = signed_store.client()
    keys = {}
    for size in SANITY_SIZES.values():
        keys[size] = f"existing/{size}/{uuid.uuid4().hex}.bin"
        s3.put_object(Bucket=BUCKET, Key=keys[size], Body=b"".join(sized_body(size)))
    return keys


def runnable(client: Client) -> Client:
    """A client the machine lacks fails its cases (.ci/run installs them all as root)."""
    if reason := client.missing():
        pytest.fail(reason)
    return client


def bytes_written(client: Client, outcome: Outcome, size: int) -> str:
    """"right", or what was wrong with them, for a failure message that says which."""
    if outcome.sha256 is None:
        return "nothing written"
    return "right" if outcome.sha256 == client.expected_sha256(size) else f"wrong: {outcome.size} bytes"


def expected_answer(client: Client, size: int) -> tuple[int, str] | None:
    """(status, Content-Range) a ranged client must have been given; None for the others."""
    if not client.ranged:
        return None
    first, last = range_for(size)
    return 206, f"bytes {first}-{last}/{size}"


def answer(client: Client, outcome: Outcome) -> tuple[int | None, str | None] | None:
    return (outcome.status, outcome.content_range) if client.ranged else None


ids = [client.id for client in CLIENTS]


# the harness, straight against the store -------------------------------------------------


@pytest.mark.parametrize("size", SANITY_SIZES.values(), ids=SANITY_SIZES.keys())
@pytest.mark.parametrize("client", CLIENTS, ids=ids)
def test_the_client_reads_a_stored_object_from_the_store_itself(client, size, signed_store, existing_objects, tmp_path):
    outcome = runnable(client).run(Target(signed_store.endpoint, *KEYS), BUCKET, existing_objects[size], tmp_path, size)
    seen = {"exit status": outcome.returncode, "bytes": bytes_written(client, outcome, size),
            "answer": answer(client, outcome)}
    assert seen == {"exit status": 0, "bytes": "right", "answer": expected_answer(client, size)}, (
        f"{client.name}, {size} bytes: {seen}; the client said: {outcome.stderr}")


# a missing object, through the proxy ------------------------------------------------------


def landed(s3, key: str, size: int, origin: ScriptedOrigin, name: str) -> str:
    """Whether the write-back stored the right bytes. It can only happen after an origin GET
    (which may start just after the client's answer, for a background copy), so a case whose
    origin was never asked does not wait the full bound."""
    try:
        wait_for(lambda: origin.count("GET", name), within=3)
    except AssertionError:
        return "not stored" if stored(s3, BUCKET, key) is None else "stored without an origin GET"
    try:
        wait_for(lambda: stored(s3, BUCKET, key), within=20 + size / (5 * MiB))
    except AssertionError:
        return "not stored"
    return "right" if stored_sha256(s3, BUCKET, key) == sized_sha256(size) else "wrong bytes stored"


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("client", CLIENTS, ids=ids)
def test_a_missing_object_through_the_proxy(client, size, clients_proxy, signed_store, recording_origin, tmp_path: Path):
    name = uuid.uuid4().hex
    key = f"sized/{size}/{name}.bin"
    outcome = runnable(client).run(Target(clients_proxy.url, *KEYS), BUCKET, key, tmp_path, size)
    store_has = landed(signed_store.client(), key, size, recording_origin, name)
    seen = {
        "exit status": outcome.returncode,
        "bytes": bytes_written(client, outcome, size),
        "answer": answer(client, outcome),
        "origin GETs": recording_origin.count("GET", name),
        "origin HEADs": recording_origin.count("HEAD", name),
        "store": store_has,
    }
    expected = {"exit status": 0, "bytes": "right", "answer": expected_answer(client, size),
                "origin GETs": 1, "origin HEADs": 0, "store": "right"}
    assert seen == expected, f"{client.name}, {size} bytes: {seen}; the client said: {outcome.stderr}"
