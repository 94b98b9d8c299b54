"""The spool: the write-backs this proxy promised, on disk until they are in the store.

Each is a body, `<id>.body`, and its manifest, `<id>.json` (an `ObjectUpload`), written after
the body, so a manifest always has a complete body: the promise to store it. The spool survives
restarts and is the only queue of write-backs (see writeback.supervisor and writeback.worker).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from backorigin.limits import PART_SIZE
from backorigin.s3.addressing import ObjectKey

logger = logging.getLogger(__name__)

# S3 user metadata a mirrored object is stored with (see miss.objectmeta)
ORIGIN_URL_META = "backorigin-origin-url"
ACAO_META = "access-control-allow-origin"
LAST_MODIFIED_META = "backorigin-last-modified"  # the Last-Modified a miss announced

# Storable origin headers and the PutObject parameter each becomes.
PUT_PARAMS = {
    "content-type": "ContentType",
    "content-encoding": "ContentEncoding",
    "content-disposition": "ContentDisposition",
    "cache-control": "CacheControl",
    "content-language": "ContentLanguage",
}

FAILED_KEPT = 1000  # write-backs the store refused for good, kept in spool/failed/ for a person to look at

# How a write-back ended. "gone": one this worker never saw end (an earlier worker finished it);
# "refused": the store refused the key itself (writeback.upload.KeyRefused), not "another writer was first".
WriteBackOutcome = Literal["stored", "exists", "deferred", "failed", "refused", "dropped", "deleted", "gone"]


@dataclass(frozen=True)
class ObjectUpload:
    """What to store (the manifest of a spooled write-back; the body lives beside it)."""

    endpoint: str
    bucket: str
    key: str
    headers: dict[str, str]  # storable origin headers
    metadata: dict[str, str]  # S3 user metadata (see objectmeta)
    size: int
    md5: str  # base64, as Content-MD5 wants it
    etag: str = ""  # the ETag the store will give it (integrity.StoreETag), announced to clients
    part_size: int = PART_SIZE  # one PUT below it, parts of it above (integrity.part_layout)
    create_only: bool = True  # If-None-Match: * (a write-back); False: it replaces (a write-through)

    @property
    def last_modified(self) -> str:
        """The Last-Modified clients were told, kept as metadata."""
        return self.metadata.get(LAST_MODIFIED_META, "")

    def object_arguments(self) -> dict[str, Any]:
        """Object headers, metadata and storage class, common to PutObject and multipart."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key,
            "StorageClass": "STANDARD",
            "Metadata": self.metadata,
        }
        for header, param in PUT_PARAMS.items():
            if header in self.headers:
                args[param] = self.headers[header]
        if "expires" in self.headers:
            try:
                args["Expires"] = parsedate_to_datetime(self.headers["expires"])
            except (TypeError, ValueError):
                logger.info("not storing unparsable Expires %r for %s", self.headers["expires"], self.key)
        return args

    def put_arguments(self, body: bytes | BinaryIO) -> dict[str, Any]:
        """PutObject arguments: the store checks Content-MD5; If-None-Match makes it create-only."""
        return {**self.object_arguments(), "Body": body, "ContentMD5": self.md5, **self.condition}

    @property
    def condition(self) -> dict[str, str]:
        """What makes a PutObject or CompleteMultipartUpload create-only, when it is."""
        return {"IfNoneMatch": "*"} if self.create_only else {}

    @property
    def object_key(self) -> ObjectKey:
        return self.endpoint, self.bucket, self.key

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def write_whole(path: Path, data: bytes, fsync: bool) -> None:
    """Write `path` (readable by this user only) so that it is there whole or not at all: through
    PATH.partial, renamed. With `fsync` the file and its directory entry reach the disk before this
    returns (power loss); without, the page cache has them (a crash of the process, kill -9).
    On an OSError (a full disk) nothing is left behind."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(data)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(partial, path)
        if fsync:
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except OSError:
        partial.unlink(missing_ok=True)
        if fsync:  # renamed but perhaps not on the disk: not promised
            path.unlink(missing_ok=True)
        raise


class Spool:
    """A directory of pending write-backs: `<id>.body` and `<id>.json` (written last, so a
    manifest always has a complete body), readable by this user only. Uploads that fail for
    good move to `failed/`, which keeps the newest FAILED_KEPT of them."""

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self.failed = directory / "failed"
        for folder in (directory, self.failed):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)  # a folder an earlier version made keeps no wider rights

    def add(self, upload: ObjectUpload, source: Path) -> Path:
        """Spool the body in `source` (a file in this directory, moved in) under a manifest
        written last; returns the manifest path. With `fsync` the manifest and the directory
        reach the disk before this returns (the body's writer syncs the body itself)."""
        name = uuid.uuid4().hex
        body = self.directory / f"{name}.body"
        manifest = self.directory / f"{name}.json"
        os.replace(source, body)
        try:
            write_whole(manifest, json.dumps(asdict(upload)).encode(), self.fsync)
        except OSError:  # a full disk, an I/O error: no promise is made, nothing is left behind
            body.unlink(missing_ok=True)
            raise
        return manifest

    def new_body_path(self) -> Path:
        """A fresh file in the spool's file system, for a download to land in before add()."""
        return self.directory / f"{uuid.uuid4().hex}.download"

    def pending(self) -> Iterator[tuple[Path, ObjectUpload]]:
        for manifest in sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime):
            yield manifest, ObjectUpload(**json.loads(manifest.read_text()))

    @staticmethod
    def body_of(manifest: Path) -> Path:
        return manifest.with_suffix(".body")

    def finish(self, manifest: Path) -> None:
        self.body_of(manifest).unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)

    def keep_failed(self, manifest: Path) -> None:
        """Keep a write-back the store refused for good in failed/ (the newest FAILED_KEPT are kept)."""
        for path in (self.body_of(manifest), manifest):
            if path.exists():
                shutil.move(path, self.failed / path.name)
        kept = sorted(self.failed.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-FAILED_KEPT]:
            self.body_of(old).unlink(missing_ok=True)
            old.unlink(missing_ok=True)

    def failed_count(self) -> int:
        return sum(1 for _ in self.failed.glob("*.json"))

    def free_bytes(self) -> int:
        usage = shutil.disk_usage(self.directory)
        return usage.free

    def clear_downloads(self) -> None:
        """Half-written downloads from a previous run can never be completed; drop them."""
        for leftover in [*self.directory.glob("*.download"), *self.directory.glob("*.partial")]:
            leftover.unlink(missing_ok=True)
