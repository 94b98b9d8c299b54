"""What every scenario of `make bench` runs against, started once (`start_stack`): SeaweedFS
(backorigin.tools.embedded_store) with the bucket `bench`, a static nginx origin, plain mitmdump,
plain mitmdump running an empty script (the hit scenario's control), mitmdump with the addon (the
README's command, one Mirror rule to the origin) and nginx as a reference proxy; the proxies under
test pinned to their own CPU (`CpuPlan`). Scenarios start further processes of their own."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from bench.load.client import request_once
from bench.report import log
from bench.services.mitmdump import Mitmdump
from bench.services.nginx import Nginx, origin_config, reference_proxy_config
from bench.services.processes import CpuPlan, Processes, listen_ports, set_affinity
from tests.support import mirror_rule, write_rules

BUCKET = "bench"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# origin path prefix -> (file name, size); /<prefix>/<anything> serves that file
# (huge.bin is written when the memory or the large-hit scenario first asks for it: Stack.huge_body)
ORIGIN_FILES = {
    "small": ("small.bin", 1 * KiB),
    "medium": ("medium.bin", 1 * MiB),
    "large": ("large.bin", 8 * MiB),
    "huge": ("huge.bin", 1 * GiB),
}
HIT_OBJECTS = ("small", "medium", "large")  # existing objects: <prefix>/hit
EMPTY_SCRIPT = Path(__file__).resolve().parent / "experiments" / "empty_script.py"  # the hit scenario's control


@dataclass
class Stack:
    tmp: Path
    processes: Processes
    store: EmbeddedStore
    origin: Nginx
    origin_port: int
    reference: Nginx
    reference_port: int
    plain: Mitmdump
    rules: Path
    confdir: Path  # plain mitmdump's, where the CA is made; every other mitmdump copies it
    cpus: CpuPlan
    extra_scripts: tuple[str, ...] = ()  # --with-script: experiments loaded after the addon in every mitmdump+addon
    huge_sha256: str | None = None  # set once the origin's 1 GiB body is written (huge_body)
    addon: Mitmdump = field(init=False)  # started by start_stack
    script: Mitmdump = field(init=False)  # plain mitmdump running an empty -s script: the hit scenario's control

    def huge_body(self) -> str:
        """The origin's 1 GiB file, written on first use (the memory and large-hit scenarios);
        returns its sha256."""
        if self.huge_sha256 is None:
            log("writing the origin's 1 GiB body")
            self.huge_sha256 = make_huge_file(self.tmp / "origin-files")
        return self.huge_sha256

    def proxy(self, name: str, port: int, rules: Path | None = None, options: dict[str, str] | None = None,
              pinned: bool = True, scripts: tuple[str, ...] = (), upstream: str | None = None) -> Mitmdump:
        """A new mitmdump in front of the store (or `upstream`), with the addon when `rules` is given
        (and then the experiments too), not started; its confdir has the stack's CA."""
        extra = (*scripts, *self.extra_scripts) if rules is not None else scripts
        return Mitmdump(name, upstream or self.store.endpoint, port, self.tmp, self.tmp / f"confdir-{name}", rules,
                        options or {}, cpus=self.cpus.proxy if pinned else None, ca_from=self.confdir, extra_scripts=extra)

    def beside_the_store(self, proxy: Mitmdump) -> None:
        """The addon's write-back worker runs beside the store, not on the core of the proxy under
        test (its CPU is read apart)."""
        set_affinity(proxy.worker_pid(), self.cpus.rest)

    @property
    def access_log(self) -> Path:
        return self.origin.workdir / "origin-access.log"

    def origin_requests(self, path: str, method: str | None = None) -> int:
        """How many requests (of `method`, if given) the origin logged for exactly this path."""
        text = self.access_log.read_text(errors="replace") if self.access_log.exists() else ""
        return sum(1 for line in text.splitlines()
                   if line.split(" ", 1)[0] == path and (method is None or line.rsplit(" ", 1)[-1] == method))

    def stored_keys(self, prefix: str) -> int:
        client = self.store.client()
        count = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            count += page.get("KeyCount", 0)
        return count

    def wait_stored(self, prefix: str, expected: int, within: float = 90.0) -> int:
        """Poll the store until `expected` keys under prefix exist (write-backs landed), bounded."""
        deadline = time.monotonic() + within
        count = self.stored_keys(prefix)
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.25)
            count = self.stored_keys(prefix)
        if count < expected:
            log(f"only {count} of {expected} objects under {prefix!r} were stored within {within:g}s")
        return count


def make_origin_files(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, size in ORIGIN_FILES.values():
        if size < GiB:
            (root / name).write_bytes(os.urandom(size))


def make_huge_file(root: Path) -> str:
    """The origin's 1 GiB body (huge.bin), written when the memory scenario first needs it;
    returns its sha256. Not zeros, as a sparse file would be: block i (1 MiB) is the window at
    i × 4093 mod 1 MiB of 2 MiB of random bytes, so all 1,024 blocks differ and a chunk
    served at the wrong offset, twice or not at all changes a client's sha256."""
    name, size = ORIGIN_FILES["huge"]
    base = os.urandom(2 * MiB)
    digest = hashlib.sha256()
    partial = root / (name + ".part")
    with open(partial, "wb") as f:
        for index in range(size // MiB):
            start = index * 4093 % MiB
            block = base[start:start + MiB]
            f.write(block)
            digest.update(block)
    partial.replace(root / name)
    return digest.hexdigest()


def start_stack(tmp: Path, processes: Processes, cpus: CpuPlan, extra_scripts: tuple[str, ...] = ()) -> Stack:
    log(f"working directory {tmp}; {cpus.describe()}")
    if cpus.rest:  # the store, the origin and the load generators inherit this
        os.sched_setaffinity(0, cpus.rest)
    make_origin_files(tmp / "origin-files")
    store = EmbeddedStore(tmp / "store", free_ports(1, with_grpc=True)[0])
    log(f"starting SeaweedFS on {store.endpoint}")
    store.start(log_path=tmp / "weed.log")
    try:
        store.create_buckets([BUCKET])
        origin_port, reference_port, plain_port, addon_port, script_port = listen_ports(5)
        origin = Nginx("origin", tmp / "nginx-origin", origin_config(
            origin_port, tmp / "origin-files", {prefix: name for prefix, (name, _) in ORIGIN_FILES.items()}
        )).start(processes, [origin_port])
        reference = Nginx("reference", tmp / "nginx-reference", reference_proxy_config(
            reference_port, store.s3_port, origin_port, BUCKET
        ), cpus=cpus.proxy).start(processes, [reference_port])
        rules = write_rules(tmp / "rules.json", {BUCKET: [mirror_rule(1, f"http://127.0.0.1:{origin_port}/")]})
        confdir = tmp / "confdir-plain"  # the first process makes the CA; the others copy it
        plain = Mitmdump("plain", store.endpoint, plain_port, tmp, confdir, cpus=cpus.proxy).start(processes)
        stack = Stack(tmp, processes, store, origin, origin_port, reference, reference_port, plain, rules, confdir, cpus,
                      extra_scripts)
        stack.script = stack.proxy("script", script_port, scripts=(str(EMPTY_SCRIPT),)).start(processes)
        stack.addon = stack.proxy("addon", addon_port, rules).start(processes)
        stack.beside_the_store(stack.addon)
    except BaseException:
        store.stop()
        raise
    log(f"origin nginx :{origin_port}, reference nginx :{reference_port}, "
        f"plain mitmdump :{plain_port}, mitmdump+addon :{addon_port}")
    return stack


def seed_hit_objects(stack: Stack) -> None:
    """The hit-path objects, mirrored once through the addon so they carry its metadata
    (the common case after a migration: every hit adds x-oss-tag from it)."""
    for prefix in HIT_OBJECTS:
        answer = asyncio.run(request_once(stack.addon.port, f"/{BUCKET}/{prefix}/hit"))
        if answer.status != 200:
            raise RuntimeError(f"seeding {prefix}/hit: the addon answered {answer.status}")
    for prefix in HIT_OBJECTS:
        stack.wait_stored(f"{prefix}/hit", 1, within=30)
    answer = asyncio.run(request_once(stack.addon.port, f"/{BUCKET}/small/hit"))
    if answer.status != 200 or "x-oss-tag" not in answer.headers or "server" not in answer.headers:
        raise RuntimeError(f"the hit object is not served by the store with x-oss-tag: {answer}")
