"""Real S3 clients, one small function each, that download s3://BUCKET/KEY through an
endpoint (the proxy, or the store itself) and report what they wrote.

Every client runs isolated from this machine's set-up: subprocesses get a clean environment
(PATH and HOME only, plus what the client needs), a HOME of their own and config files made
here, because a user's ~/.aws/config, ~/.s3cfg, rclone.conf, ~/.curlrc, proxy variables or an
AWS_CA_BUNDLE would change what is sent (rclone refuses to start at all when AWS_CA_BUNDLE is
set). Each client makes one attempt (no retries), so the requests an origin sees belong to
one download and a broken answer fails fast instead of being retried for minutes. Every
subprocess has a timeout; a client that runs out of time is reported with exit status 124.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.origin_server import sized_body

VENV_BIN = Path(sys.executable).parent
TIMEOUT = 180.0  # seconds per download: 100 MiB over loopback takes a few
TIMED_OUT = 124  # the exit status timeout(1) uses
REGION = "us-east-1"
CLEAN_PATH = f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin"  # the venv first: its aws and s3cmd


@dataclass(frozen=True)
class Target:
    """Where a client sends its requests, and the SigV4 credentials it signs them with."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str

    @property
    def hostport(self) -> str:
        return urlsplit(self.endpoint).netloc


@dataclass(frozen=True)
class Outcome:
    """What one client run produced. sha256 is None when the client wrote nothing at all
    (rclone exits 0 without creating the file when it decides the object does not exist)."""

    returncode: int
    sha256: str | None
    size: int
    stderr: str  # the tail: enough to see why it failed
    status: int | None = None  # the HTTP status, where the client reports it (boto3, curl)
    content_range: str | None = None  # of a ranged answer (boto3, curl)


# expected bytes ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def sized_sha256(size: int, first: int = 0, last: int | None = None) -> str:
    """sha256 of bytes first..last (inclusive) of the origin's `sized` body of `size` bytes;
    cached, since every client in the matrix compares against the same few digests."""
    last = size - 1 if last is None else last
    digest = hashlib.sha256()
    offset = 0
    for piece in sized_body(size):
        start, end = max(first - offset, 0), min(last + 1 - offset, len(piece))
        if start < end:
            digest.update(piece[start:end])
        offset += len(piece)
        if offset > last:
            break
    return digest.hexdigest()


def range_for(size: int) -> tuple[int, int]:
    """An inclusive byte range inside the object that starts and ends off any 1 MiB or 8 MiB
    boundary, so a slice taken from the wrong place or a whole body shows in the digest."""
    first = size // 3 + 7
    return first, min(size - 1, first + (1 << 20) + 16)


def sha256_of_file(path: Path) -> str | None:
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def stored_sha256(s3, bucket: str, key: str) -> str:
    """sha256 of the object as the store has it, read in 1 MiB pieces (never whole in memory)."""
    return sha256_of_chunks(s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20))[0]


# running a command -------------------------------------------------------------------------


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """CLEAN_PATH and a HOME of the run's own: nothing else from this machine's environment
    reaches the client."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": CLEAN_PATH, "HOME": str(home), "LC_ALL": "C.UTF-8", **extra}


def tail(data: bytes | str, limit: int = 2000) -> str:
    """Its start and its end: s3cmd puts the cause at the top of a long crash report, the
    other clients put it last."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text if len(text) <= limit else f"{text[: limit // 3]} [...] {text[-2 * limit // 3:]}"


def run_to_file(command: list[str], env: dict[str, str], written: Path, stdout_is_output: bool = False,
                timeout: float = TIMEOUT) -> Outcome:
    """Runs a client that writes `written` (or whose stdout is the object, then sent to
    `written` so 100 MiB never sits in memory) and reports what is in that file."""
    written.parent.mkdir(parents=True, exist_ok=True)
    written.unlink(missing_ok=True)  # an old copy would make rclone skip and s3cmd refuse
    try:
        with open(written if stdout_is_output else os.devnull, "wb") as out:
            done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.PIPE, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        returncode, stderr = done.returncode, tail(done.stderr)
    except subprocess.TimeoutExpired as e:
        returncode, stderr = TIMED_OUT, f"timed out after {timeout:g}s; " + tail(e.stderr or b"")
    size = written.stat().st_size if written.exists() else 0
    return Outcome(returncode, sha256_of_file(written), size, stderr)


# the AWS CLI -------------------------------------------------------------------------------


def aws_env(target: Target, workdir: Path) -> dict[str, str]:
    """Keys and region from the environment, path-style addressing from a config file of the
    run's own (the store has no virtual-hosted names), one attempt."""
    config = workdir / "aws-config"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    return clean_env(
        workdir / "home",
        AWS_ACCESS_KEY_ID=target.access_key, AWS_SECRET_ACCESS_KEY=target.secret_key, AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-credentials"),
        AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard",
    )


def aws_cp_file(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """`aws s3 cp s3://b/k FILE`: HEAD, then one GET, or 8 MiB ranged GETs with If-Match."""
    out = workdir / "aws-cp.out"
    command = [str(VENV_BIN / "aws"), "--endpoint-url", target.endpoint, "s3", "cp", "--no-progress",
               f"s3://{bucket}/{key}", str(out)]
    return run_to_file(command, aws_env(target, workdir), out)


def aws_cp_stdout(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """`aws s3 cp s3://b/k -`: the same requests as to a file, parts written out in order."""
    command = [str(VENV_BIN / "aws"), "--endpoint-url", target.endpoint, "s3", "cp", "--no-progress",
               f"s3://{bucket}/{key}", "-"]
    return run_to_file(command, aws_env(target, workdir), workdir / "aws-cp-stdout.out", stdout_is_output=True)


def aws_get_object(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """`aws s3api get-object --bucket b --key k FILE`: one GET, no HEAD first."""
    out = workdir / "aws-get-object.out"
    command = [str(VENV_BIN / "aws"), "--endpoint-url", target.endpoint, "s3api", "get-object", "--bucket", bucket,
               "--key", key, str(out)]
    return run_to_file(command, aws_env(target, workdir), out)


# boto3 (in this process) -----------------------------------------------------------------


def boto3_client(target: Target, signature_version: str | None = None):
    """A path-style client that reads no config or credentials file (botocore would read the
    user's ~/.aws/config otherwise), with one attempt and bounded socket timeouts."""
    import boto3
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    return boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=target.endpoint, region_name=REGION,
        aws_access_key_id=target.access_key, aws_secret_access_key=target.secret_key,
        config=Config(s3={"addressing_style": "path"}, signature_version=signature_version,
                      retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60),
    )


def _failed(error: Exception) -> Outcome:
    """A boto3 error as a client outcome: exit status 1, the HTTP status if there was one."""
    status = (getattr(error, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return Outcome(1, None, 0, tail(f"{type(error).__name__}: {error}"), status=status)


def boto3_download_file(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """download_file with the default TransferConfig: HEAD, then over 8 MiB parallel 8 MiB
    ranged GETs with If-Match (s3transfer), as `aws s3 cp`."""
    out = workdir / "download_file.out"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        boto3_client(target).download_file(bucket, key, str(out))
    except Exception as e:  # any failure is the client's result, not a harness error
        return _failed(e)
    return Outcome(0, sha256_of_file(out), out.stat().st_size, "")


def boto3_get_object(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """One GET of the whole object, read in 1 MiB pieces."""
    try:
        answer = boto3_client(target).get_object(Bucket=bucket, Key=key)
        digest, size = sha256_of_chunks(answer["Body"].iter_chunks(1 << 20))
    except Exception as e:
        return _failed(e)
    return Outcome(0, digest, size, "", status=answer["ResponseMetadata"]["HTTPStatusCode"])


def boto3_get_object_range(target: Target, bucket: str, key: str, workdir: Path, first: int, last: int) -> Outcome:
    """One GET with Range: bytes=first-last; the status and Content-Range come back for the test
    to check (a 200 with the whole body would be a wrong answer the client accepts)."""
    try:
        answer = boto3_client(target).get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}")
        digest, size = sha256_of_chunks(answer["Body"].iter_chunks(1 << 20))
    except Exception as e:
        return _failed(e)
    return Outcome(0, digest, size, "", status=answer["ResponseMetadata"]["HTTPStatusCode"],
                   content_range=answer.get("ContentRange"))


def presigned_url(target: Target, bucket: str, key: str, expires: int = 600) -> str:
    """A SigV4 query-signed URL (the signature covers Host, which keep_host_header passes on),
    so curl needs no credentials and the store stays SigV4-only."""
    return boto3_client(target, signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


# s3cmd -------------------------------------------------------------------------------------


def s3cmd_config(target: Target, workdir: Path) -> Path:
    """A .s3cfg of the run's own: path-style (host_bucket without %(bucket)s), plain HTTP,
    SigV4, no retries (s3cmd sleeps 3 s and more between them)."""
    config = workdir / "s3cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "[default]\n"
        f"access_key = {target.access_key}\n"
        f"secret_key = {target.secret_key}\n"
        f"host_base = {target.hostport}\n"
        f"host_bucket = {target.hostport}\n"
        f"bucket_location = {REGION}\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        "progress_meter = False\n"
        "max_retries = 1\n"
        "socket_timeout = 60\n"
    )
    return config


def s3cmd_get(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """`s3cmd get`: HEAD (it needs the ETag), then one GET; an ETag that is not the body's MD5
    only gives a warning ("MD5 signatures do not match"), exit status 0."""
    out = workdir / "s3cmd.out"
    command = [str(VENV_BIN / "s3cmd"), "-c", str(s3cmd_config(target, workdir)), "get", f"s3://{bucket}/{key}", str(out)]
    return run_to_file(command, clean_env(workdir / "home"), out)


# rclone ------------------------------------------------------------------------------------

RCLONE_REMOTE = "target"


def rclone_env(target: Target, workdir: Path) -> dict[str, str]:
    """The remote from environment variables only (RCLONE_CONFIG_<NAME>_<OPTION>)."""
    prefix = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
    remote = {
        "TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": target.endpoint, "ACCESS_KEY_ID": target.access_key,
        "SECRET_ACCESS_KEY": target.secret_key, "FORCE_PATH_STYLE": "true", "REGION": REGION,
    }
    return clean_env(workdir / "home", **{prefix + name: value for name, value in remote.items()})


def rclone_command(*args: str) -> list[str]:
    """No config file, one attempt at every level, bounded connect and idle timeouts."""
    return ["rclone", "--config", os.devnull, "--retries", "1", "--low-level-retries", "1",
            "--contimeout", "10s", "--timeout", "60s", *args]


def rclone_copyto(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """`rclone copyto remote:b/k FILE`: HEAD, HEAD, GET. After a HEAD 404 it lists k/ as a
    directory and exits 0 without writing anything."""
    out = workdir / "rclone-copyto.out"
    command = rclone_command("copyto", f"{RCLONE_REMOTE}:{bucket}/{key}", str(out))
    return run_to_file(command, rclone_env(target, workdir), out)


def rclone_cat(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """`rclone cat remote:b/k`: HEAD, a listing of the parent prefix, then GET only if the
    listing names the object; otherwise nothing on stdout and exit status 0."""
    command = rclone_command("cat", f"{RCLONE_REMOTE}:{bucket}/{key}")
    return run_to_file(command, rclone_env(target, workdir), workdir / "rclone-cat.out", stdout_is_output=True)


# curl --------------------------------------------------------------------------------------


def curl(target: Target, bucket: str, key: str, workdir: Path, first: int | None = None,
         last: int | None = None, options: Sequence[str] = ()) -> Outcome:
    """`curl -fsS` of a presigned URL, with `-r first-last` when given, and `options` (--http1.0,
    -H "Connection: close"...). -q: no ~/.curlrc. It follows no redirect, so a 302 is written as
    an empty file with exit status 0."""
    out, headers, status_file = workdir / "curl.out", workdir / "curl.headers", workdir / "curl.status"
    for stale in (out, headers):
        stale.unlink(missing_ok=True)
    ranged = ["-r", f"{first}-{last}"] if first is not None else []
    command = ["curl", "-q", "-fsS", "--connect-timeout", "10", "--max-time", str(int(TIMEOUT - 10)), *ranged, *options,
               "-o", str(out), "-D", str(headers), "-w", "%{http_code}", presigned_url(target, bucket, key)]
    # -w writes to stdout, which goes to its own file; the body goes to -o
    outcome = run_to_file(command, clean_env(workdir / "home"), status_file, stdout_is_output=True)
    code = status_file.read_text().strip()
    size = out.stat().st_size if out.exists() else 0
    return Outcome(outcome.returncode, sha256_of_file(out), size, outcome.stderr,
                   status=int(code) if code.isdigit() and code != "000" else None,
                   content_range=_header(headers, "content-range"))


def urllib_get(target: Target, bucket: str, key: str, workdir: Path) -> Outcome:
    """What many scripts do: shutil.copyfileobj(urllib.request.urlopen(presigned URL), file), with
    no proxy from the environment. urllib sends `Connection: close`, and http.client reading in
    pieces does not notice a body shorter than its Content-Length: only the bytes tell."""
    out = workdir / "urllib.out"
    workdir.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(presigned_url(target, bucket, key), timeout=60) as answer, open(out, "wb") as file:
            shutil.copyfileobj(answer, file)
    except Exception as e:  # a reset, an HTTP error: the client's result
        return Outcome(1, sha256_of_file(out), 0, tail(f"{type(e).__name__}: {e}"), status=getattr(e, "code", None))
    return Outcome(0, sha256_of_file(out), out.stat().st_size, "", status=answer.status)


def _header(dump: Path, name: str) -> str | None:
    """The last value of a header in a `curl -D` dump (None when absent)."""
    if not dump.exists():
        return None
    values = [line.split(":", 1)[1].strip() for line in dump.read_text(errors="replace").splitlines()
              if line.lower().startswith(name + ":")]
    return values[-1] if values else None


def curl_range(target: Target, bucket: str, key: str, workdir: Path, first: int, last: int) -> Outcome:
    return curl(target, bucket, key, workdir, first, last)


# the matrix --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """One way to download an object; `ranged` ones take (first, last) and return that slice."""

    name: str
    download: Callable[..., Outcome]
    program: str | None = None  # the executable it runs (None: boto3, in this process)
    ranged: bool = False

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")

    def missing(self) -> str | None:
        """Why this client cannot run here, or None."""
        if self.program and not shutil.which(self.program, path=CLEAN_PATH):
            return (f"needs `{self.program}`: aws and s3cmd come with pip install -e '.[test]', rclone and curl "
                    "from Debian's packages (.ci/run installs them when run as root)")
        return None

    def run(self, target: Target, bucket: str, key: str, workdir: Path, size: int) -> Outcome:
        workdir = workdir / self.name.replace(" ", "_").replace("/", "_")
        if self.ranged:
            return self.download(target, bucket, key, workdir, *range_for(size))
        return self.download(target, bucket, key, workdir)

    def expected_sha256(self, size: int) -> str:
        return sized_sha256(size, *range_for(size)) if self.ranged else sized_sha256(size)


CLIENTS = [
    Client("aws s3 cp file", aws_cp_file, program="aws"),
    Client("aws s3 cp stdout", aws_cp_stdout, program="aws"),
    Client("boto3 download_file", boto3_download_file),
    Client("boto3 get_object", boto3_get_object),
    Client("boto3 get_object range", boto3_get_object_range, ranged=True),
    Client("s3cmd get", s3cmd_get, program="s3cmd"),
    Client("rclone copyto", rclone_copyto, program="rclone"),
    Client("rclone cat", rclone_cat, program="rclone"),
    Client("curl", curl, program="curl"),
    Client("curl range", curl_range, program="curl", ranged=True),
]


# an origin that records methods ----------------------------------------------------------
