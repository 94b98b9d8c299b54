"""A migration that can be rolled back, as the write-through tests and its measurement run it: the
store and the origin are two SeaweedFS, each with a SigV4 identity of its own; the origin's
buckets are the Mirror rules' S3 origins (MirrorAuth) of buckets with "WriteThrough": true; the
documented mitmdump, with its metrics on, is in front of the store."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.clients import VENV_BIN, Target, aws_env, boto3_client
from tests.modes_support import ModeMitmdump
from tests.support import mirror_rule, scrape, stored, wait_for

STORE_KEYS = ("wtstorekey", "wtstoresecret")
ORIGIN_KEYS = ("wtoriginkey", "wtoriginsecret")
BUCKET = "wt-bucket"  # written through to ORIGIN_BUCKET
VERSIONED = "wt-versioned"  # versioned, written through to ORIGIN_VERSIONED, versioned too: its history is the order writes landed
PLAIN = "wt-plain"  # mirrored from ORIGIN_BUCKET without WriteThrough (it is off by default)
AWAY = "wt-away"  # written through to ORIGIN_BUCKET at an origin of a test's own (one it stops and starts)
ORIGIN_BUCKET = "old-bucket"
ORIGIN_VERSIONED = "old-versioned"
AUTH = {"AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": ORIGIN_KEYS[0], "AccessKeySecret": ORIGIN_KEYS[1]}
STORE_ENV = {"AWS_ACCESS_KEY_ID": STORE_KEYS[0], "AWS_SECRET_ACCESS_KEY": STORE_KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}


def rules_document(origin_endpoint: str, bucket: str = BUCKET) -> dict[str, Any]:
    """`bucket` (and VERSIONED) written through to the origin's buckets; PLAIN only mirrored."""
    def rule(origin_bucket: str) -> dict[str, Any]:
        return mirror_rule(1, f"{origin_endpoint}/{origin_bucket}/", MirrorAuth=AUTH)

    return {"Buckets": [
        {"Name": bucket, "WriteThrough": True, "RoutingRules": [rule(ORIGIN_BUCKET)]},
        {"Name": VERSIONED, "WriteThrough": True, "RoutingRules": [rule(ORIGIN_VERSIONED)]},
        {"Name": PLAIN, "RoutingRules": [rule(ORIGIN_BUCKET)]},
    ]}


def write_through_rules(path: Path, origin_endpoint: str, bucket: str = BUCKET) -> Path:
    path.write_text(json.dumps(rules_document(origin_endpoint, bucket), indent=2))
    return path


def start_store(folder: Path, keys: tuple[str, str], buckets: list[str], versioned: str) -> EmbeddedStore:
    """A SeaweedFS enforcing SigV4 for `keys`, with `buckets`, `versioned` among them with versioning on."""
    store = EmbeddedStore(folder, free_ports(1, with_grpc=True)[0], *keys)
    store.start()
    store.create_buckets(buckets)
    store.client().put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    return store


def start_origin(folder: Path) -> EmbeddedStore:
    return start_store(folder, ORIGIN_KEYS, [ORIGIN_BUCKET, ORIGIN_VERSIONED], ORIGIN_VERSIONED)


def start_the_store(folder: Path) -> EmbeddedStore:
    return start_store(folder, STORE_KEYS, [BUCKET, VERSIONED, PLAIN, AWAY], VERSIONED)


@dataclass
class Proxy(ModeMitmdump):
    """The documented reverse proxy (keep_host_header: SigV4 signs Host) with its metrics on; the
    store's keys in its environment, for the write-through worker's reads of the store."""

    metrics_port: int = field(default_factory=lambda: free_ports(1)[0])

    @classmethod
    def of(cls, workdir: Path, store: EmbeddedStore, rules: Path, **options: str) -> Proxy:
        proxy = cls(f"reverse:{store.endpoint}", rules, workdir, env=dict(STORE_ENV))
        proxy.options = {"keep_host_header": "true", "backorigin_origin_timeout": "30", **options,
                         "backorigin_metrics_port": str(proxy.metrics_port)}
        return proxy

    @property
    def target(self) -> Target:
        return Target(self.url, *STORE_KEYS)

    def client(self) -> Any:
        """boto3 through the proxy, signed with the store's keys."""
        return boto3_client(self.target)

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.metrics_port).get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_applied(self, within: float = 120.0) -> None:
        """Until every write acknowledged through it is at the origin (its journal is empty)."""
        wait_for(lambda: self.metric("backorigin_writethrough_pending") == 0, within=within, every=0.2)

    @property
    def journal(self) -> Path:
        return self.spool / "writethrough"


def sha256_of(client: Any, bucket: str, key: str) -> str | None:
    """sha256 of an object's bytes as the S3 at `client` holds it; None when it has none."""
    if stored(client, bucket, key) is None:
        return None
    digest = hashlib.sha256()
    for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def aws(proxy: Proxy, workdir: Path, *arguments: str) -> None:
    """The AWS CLI through the proxy, signed with the store's keys."""
    command = [str(VENV_BIN / "aws"), "--endpoint-url", proxy.url, "s3", *arguments, "--only-show-errors"]
    done = subprocess.run(command, env=aws_env(proxy.target, workdir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
