"""The world of tests/e2e/test_reading.py: a SeaweedFS that answers virtual-hosted names
(`-s3.domainName=s3.test`) with per-bucket identities, the same store behind an nginx front, an
origin that records what it is asked, and the documented reverse proxy in front of each; requests
signed as clients sign them, and what the store and the proxy did, read from the store, the
origin's log and the proxy's tombstones."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from backorigin.tombstones.journal import LocalTombstones
from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.support import wait_for, write_identities

BUCKETS = ("pub", "priv", "mine")
ADMIN = ("readingadmin", "readingadminsecret")  # the proxy's own credentials too
USER = ("readinguser", "readingusersecret")  # allowed the bucket mine only
IDENTITIES = {"admin": ADMIN, "user": USER, "anonymous": None}
DOMAIN = "s3.test"


def start_store(workdir: Path) -> EmbeddedStore:
    """SeaweedFS with virtual-hosted names under s3.test: anonymous may read pub, the user
    may read, write and list mine, the admin anything."""
    config = write_identities(workdir / "s3.json", ADMIN, {
        "user": (USER, ["Read:mine", "Write:mine", "List:mine"]),
        "anonymous": (None, ["Read:pub"]),
    })
    store = EmbeddedStore(workdir / "data", free_ports(1, with_grpc=True)[0], *ADMIN,
                          extra_args=(f"-s3.domainName={DOMAIN}", f"-s3.config={config}"))
    store.start()
    store.create_buckets(list(BUCKETS))
    return store


@dataclass
class Nginx:
    """nginx in front of the store: the request target and Host pass on as they came."""

    workdir: Path
    upstream: int
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> Nginx:
        self.port = free_ports(1)[0]
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "nginx.conf").write_text(f"""
daemon off; worker_processes 1; pid {self.workdir}/nginx.pid; error_log {self.workdir}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log off; client_body_temp_path {self.workdir}/body; proxy_temp_path {self.workdir}/proxy;
  fastcgi_temp_path {self.workdir}/fcgi; uwsgi_temp_path {self.workdir}/uwsgi; scgi_temp_path {self.workdir}/scgi;
  server {{
    listen 127.0.0.1:{self.port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://127.0.0.1:{self.upstream};
      proxy_set_header Host $http_host;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
    }}
  }}
}}
""")
        self.process = subprocess.Popen(["nginx", "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: self._answers(), within=15)
        return self

    def _answers(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def signed(method: str, host: str, target: str, body: bytes, keys: tuple[str, str] | None) -> dict[str, str]:
    """The headers a SigV4 client sends for this request (none but Host for an anonymous one)."""
    headers = {"host": host}
    if body:
        headers["content-md5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
    if keys is None:
        return headers
    request = AWSRequest(method=method, url=f"http://127.0.0.1{target}", data=body, headers=headers)
    S3SigV4Auth(Credentials(*keys), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


_FIELD = re.compile(rb"<(BucketName|Key)>(.*?)</\1>", re.S)


@dataclass(frozen=True)
class StoreRead:
    """What the store read from a GET: its status and the object (bucket, key) it named."""

    status: int
    bucket: str | None
    key: str | None


def store_read(status: int, body: bytes) -> StoreRead:
    if status == 200 and body.startswith(b"stored:"):
        bucket, _, key = body[len(b"stored:"):].decode("utf-8", "surrogateescape").partition("/")
        return StoreRead(200, bucket, key)
    found = {name.decode(): value.decode("utf-8", "surrogateescape") for name, value in _FIELD.findall(body)}
    return StoreRead(status, found.get("BucketName"), found.get("Key"))


def origin_object(path: str) -> tuple[str, str]:
    """The (bucket, key) an origin request asks for: rules map bucket B to ORIGIN/B/ + key."""
    bucket, _, key = unquote_to_bytes(path.split("?", 1)[0]).decode("utf-8", "surrogateescape")[1:].partition("/")
    return bucket, key


def normalized(key: str) -> str:
    """The key SeaweedFS stores for a key (backslashes and repeated slashes folded, no leading slash)."""
    return re.sub("/{2,}", "/", key.replace("\\", "/")).lstrip("/")


def tombstoned(spool: Path, objects: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of `objects` have a tombstone in the proxy's journal (read afresh, as its worker reads it)."""
    found = LocalTombstones(spool / "tombstones", fresh=True)
    return {ref for ref in objects if ref in found}


def all_tombstones(spool: Path) -> set[tuple[str, str]]:
    return set(LocalTombstones(spool / "tombstones", fresh=True))


@dataclass
class Tally:
    """What a run of cases saw, for the failure message and the suite's cost."""

    cases: int = 0
    acted: int = 0
    set_aside: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # by method
    versions: set[str] = field(default_factory=set)  # of the proxy's answers
    may_be_tombstoned: set[tuple[str, str]] = field(default_factory=set)  # what the store deleted, or the case did
