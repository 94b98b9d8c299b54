"""Test helpers: running the real mitmdump with the addon exactly as the README documents it,
the `backorigin` command in this process, rules files, polling, a slow relay."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from botocore.exceptions import ClientError

from backorigin.tools import cli
from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from backorigin.writeback.proxyspools import default_spool

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
BACKORIGIN = str(Path(sys.executable).with_name("backorigin"))  # the console command pip installs


def mirror_rule(number: int, mirror_url: str, prefix: str = "", suffix: str = "", **redirect) -> dict:
    condition: dict[str, int | str] = {"HttpErrorCodeReturnedEquals": 404}
    if prefix:
        condition["KeyPrefixEquals"] = prefix
    if suffix:
        condition["KeySuffixEquals"] = suffix
    return {
        "RuleNumber": number,
        "Condition": condition,
        "Redirect": {"RedirectType": "Mirror", "MirrorURL": mirror_url, **redirect},
    }


def write_rules(path: Path, buckets: dict[str, list[dict]]) -> Path:
    path.write_text(json.dumps({"Buckets": [{"Name": n, "RoutingRules": r} for n, r in buckets.items()]}, indent=2))
    return path


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object) -> Ran:
    """`backorigin ARGS...` in this process, from the repository root, as a user's shell runs it."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(arg) for arg in args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
    return Ran(code, out.getvalue(), err.getvalue())


def mitmdump_command(
    mode: str, port: int, rules: Path | None, options: dict[str, str], extra_args: Sequence[str] = ()
) -> list[str]:
    """The README's command line; `rules` None: plain mitmdump, without the addon."""
    script = ["-s", "addon/script.py"] if rules is not None else []
    sets = {**({"backorigin_rules": str(rules)} if rules is not None else {}), **options}
    return [
        MITMDUMP, *script, "--mode", mode, "--listen-host", "127.0.0.1", "--listen-port", str(port),
        *(arg for name, value in sets.items() for arg in ("--set", f"{name}={value}")),
        *extra_args,
    ]


def wait_until_listening(process: subprocess.Popen, log: Callable[[], str], ready_within: float) -> None:
    """Until mitmdump says it listens; an exit, a script error or the time limit raise with its log."""
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        text = log()
        if "error in script" in text:  # logged before "listening"; mitmdump then exits with 1
            process.wait(timeout=ready_within)
        if process.poll() is not None:
            raise RuntimeError(f"mitmdump exited with {process.returncode}:\n{log()}")
        if " listening at " in text:
            return
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"mitmdump did not start within {ready_within:g}s:\n{log()}")


@dataclass
class Mitmdump:
    """mitmdump -s addon/script.py --mode MODE --set backorigin_rules=FILE [--set ...]"""

    mode: str
    rules: Path
    workdir: Path
    options: dict[str, str] = field(default_factory=dict)
    port: int = 0
    extra_args: list[str] = field(default_factory=list)  # e.g. ["-w", "flows.mitm"]
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def confdir(self) -> Path:
        return Path(self.options.get("confdir", self.workdir / "confdir"))

    @property
    def client_ca(self) -> Path:
        """mitmproxy's CA certificate, made at start-up in its confdir: what its HTTPS clients trust."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def spool(self) -> Path:
        """Where its write-backs wait: backorigin_spool_dir, else the proxy's own default spool."""
        if "backorigin_spool_dir" in self.options:
            return Path(self.options["backorigin_spool_dir"])
        return default_spool(self.confdir, [self.mode], getattr(self, "listen_host", "127.0.0.1"), self.port)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"mitmdump-{self.port}.log"

    def command(self) -> list[str]:
        return mitmdump_command(self.mode, self.port, self.rules, {"confdir": str(self.workdir / "confdir"), **self.options},
                                self.extra_args)

    def start(self, ready_within: float = 30.0) -> Self:
        self.port = self.port or free_ports(1)[0]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_until_listening(self.process, self.log, ready_within)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C, as a user would; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def metered_proxy(workdir: Path, store: EmbeddedStore, bucket: str, origin_base: str) -> tuple[Mitmdump, int]:
    """The documented proxy serving its metrics (backorigin_metrics_port), mirroring `bucket` from
    the scripted origin's /dir1/: the proxy, started, and its metrics port."""
    store.create_buckets([bucket])
    rules = write_rules(workdir / "rules.json", {bucket: [mirror_rule(1, f"{origin_base}/dir1/")]})
    port = free_ports(1)[0]
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, workdir,
                     {"backorigin_metrics_port": str(port), "backorigin_origin_timeout": "5"}).start()
    return proxy, port


def running(pid: int) -> bool:
    """Whether the process is alive (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def write_back_worker(proxy_pid: int, within: float = 15.0, module: str = "backorigin.writeback.worker") -> int:
    """The pid of the addon's write-back worker (python -m backorigin.writeback.worker, a child of
    mitmdump), or of its other worker `module`."""
    def find() -> int | None:
        for task in Path(f"/proc/{proxy_pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if module.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                        return int(child)
        return None
    return wait_for(find, within=within)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The proxy's Prometheus metrics (backorigin_metrics_port): (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def wait_for(check, within: float = 15.0, every: float = 0.1):
    """Poll `check()` until it returns a truthy value or `within` seconds pass (then raise)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:g}s: {check}")
        time.sleep(every)


def stored(s3, bucket: str, key: str):
    """The store's HEAD of a key, None while it has no such object."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def wait_stored(s3, bucket: str, key: str, within: float = 15.0):
    return wait_for(lambda: stored(s3, bucket, key), within=within)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw GET (no decoding, no redirects followed): status, headers, body bytes."""
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Relay:
    """A loopback TCP relay that holds each connection `delay` seconds before passing it on
    (a slow store, so write-backs are still pending when the test needs them to be) and
    passes the upstream's answers on at `rate` bytes/s when given (a slow origin, so a fetch
    is still under way while later misses arrive), and the requests at `request_rate` bytes/s (a
    slow upload).

    `requests` is the upstream's access log: the request line of every request relayed (for
    clients that send no request bodies, like the proxy's origin fetches)."""

    def __init__(self, upstream_port: int, delay: float = 0.0, rate: int | None = None, request_rate: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.rate = rate
        self.request_rate = request_rate
        self.requests: list[str] = []
        self.accepted = 0  # connections taken so far (each is held `delay` seconds)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        time.sleep(self.delay)
        with client:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return  # the upstream is down: the client sees its connection closed
            with upstream:
                threading.Thread(target=_pipe, args=(client, upstream, self.request_rate, self._log_requests()), daemon=True).start()
                _pipe(upstream, client, self.rate)

    def _log_requests(self) -> Callable[[bytes], None]:
        """A reader of one connection's request bytes that logs each request line."""
        pending = b""

        def read(data: bytes) -> None:
            nonlocal pending
            pending += data
            while (end := pending.find(b"\r\n\r\n")) >= 0:
                self.requests.append(pending[:pending.find(b"\r\n")].decode("latin-1"))
                pending = pending[end + 4:]

        return read


def _pipe(source: socket.socket, sink: socket.socket, rate: int | None = None,
          seen: Callable[[bytes], None] | None = None) -> None:
    started, sent = time.monotonic(), 0
    try:
        while data := source.recv(65536):
            if seen:
                seen(data)
            sink.sendall(data)
            sent += len(data)
            if rate and (ahead := sent / rate - (time.monotonic() - started)) > 0:
                time.sleep(ahead)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def rule_of(redirect: dict | None = None, condition: dict | None = None, number: int = 1):
    """One RoutingRule, validated as a rules file would be (default: a Mirror rule to http://o/)."""
    from backorigin.rules.parsing import parse_rules

    rule: dict = {"RuleNumber": number, "Redirect": redirect or {"RedirectType": "Mirror", "MirrorURL": "http://o/"}}
    if condition is not None:
        rule["Condition"] = condition
    return parse_rules(json.dumps({"Buckets": [{"Name": "b", "RoutingRules": [rule]}]}), "t").rules_for("b")[0]


def book_of(bucket: str, rules: list[dict]):
    """A RuleBook of one bucket's rules (as a rules file's RoutingRules)."""
    from backorigin.rules.parsing import parse_rules

    return parse_rules(json.dumps({"Buckets": [{"Name": bucket, "RoutingRules": rules}]}), "t")


# `weed mini` makes a volume per bucket and has room for about 80 by default: these make room for thousands
ADMIN_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


def write_identities(path: Path, admin: tuple[str, str], others: dict[str, tuple[tuple[str, str] | None, list[str]]]) -> Path:
    """A SeaweedFS `-s3.config` file: `admin` may do anything; each other identity (keys, or None
    for anonymous clients) only its actions ("Read:bucket", "Write:bucket/prefix/*"...)."""
    identities = [{"name": "admin", "credentials": [{"accessKey": admin[0], "secretKey": admin[1]}], "actions": ADMIN_ACTIONS}]
    for name, (keys, actions) in others.items():
        credentials = {"credentials": [{"accessKey": keys[0], "secretKey": keys[1]}]} if keys else {}
        identities.append({"name": name, **credentials, "actions": actions})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identities": identities}))
    return path


MANY_BUCKETS = ("-volume.max=0", "-master.volumeSizeLimitMB=4")


@contextlib.contextmanager
def running_store(directory: Path, buckets: Sequence[str], keys: tuple[str, str] | tuple[()] = (),
                  extra_args: tuple[str, ...] = ()) -> Iterator[EmbeddedStore]:
    """A SeaweedFS of its own with these buckets; with `keys` it enforces SigV4, as most real stores do."""
    access, secret = keys or (None, None)
    store = EmbeddedStore(directory, free_ports(1, with_grpc=True)[0], access, secret, extra_args=extra_args)
    store.start()
    try:
        store.create_buckets(list(buckets))
        yield store
    finally:
        store.stop()
