"""Scenario `missttfb` of `make bench` (issue 28 item 7): when a miss starts answering.

Time to first body byte and total time of a GET of a missing 8, 32 and 64 MiB object, against
what any miss costs at least, as scenario 2 (the miss path) measures it: the floor of its first
byte is the store's 404 through plain mitmdump plus the origin's own first byte (asked directly);
the context of its total is that 404 plus a hit of the same object through plain mitmdump
(`stream_large_bodies=1m`, as the addon has mitmproxy do), once the object has landed.
Three kinds of miss, each
through its own mitmdump+addon in front of the store, from one nginx origin:

- `etag`: the origin sends an ETag that is the body's MD5 (as an S3 origin does): the ETag is
  known in advance, and the answer streams from the first byte;
- `plain`: nginx's own ETag (not an MD5), default options: answered once whole up to
  backorigin_max_inline (64 MiB), so that it carries its ETag;
- `plain, max_inline=1m`: the same origin, streamed as it arrives, without an ETag;
- `etag, leases off`: as `etag`, without the fleet's lease (a store request before the fetch).

Each round asks every kind once, on a new key (the write-backs of the round land before the
next begins), then the hit; the figures are medians over the rounds. Run alone with
`.venv/bin/python -m bench.scenarios.missttfb [--rounds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from backorigin.limits import STREAM_LARGE_BODIES
from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from bench.load import client as loadgen
from bench.report import log
from bench.services.mitmdump import Mitmdump
from bench.services.nginx import HTTP_COMMON, Nginx
from bench.services.processes import Processes, listen_ports

MiB = 1 << 20
SIZES = (8 * MiB, 32 * MiB, 64 * MiB)
BUCKET = "bench-ttfb"
KINDS = {  # kind -> (origin location, the proxy's options)
    "etag": ("etag", {}),
    "plain": ("plain", {}),
    "plain, max_inline=1m": ("plain", {"backorigin_max_inline": "1m"}),
    "etag, leases off": ("etag", {"backorigin_leases": "off"}),  # what the fleet's lease adds before the fetch
}
REFERENCES = {"hit": "hit via plain mitmdump", "404": "404 via plain mitmdump", "origin": "origin directly"}
TARGET = 1.5  # at 8 MiB: first byte ≤ 1.5 × the hit's, total ≤ 1.5 × the hit's
Add = Callable[..., None]  # Report.add of bench.run: (number, scenario, figure, measured, target, met)


def write_bodies(root: Path) -> dict[int, str]:
    """One random file per size; its MD5 (hex) by size."""
    root.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for size in SIZES:
        digest = hashlib.md5()
        with open(root / f"{size}.bin", "wb") as out:
            for _ in range(size // MiB):
                chunk = os.urandom(MiB)
                digest.update(chunk)
                out.write(chunk)
        md5s[size] = digest.hexdigest()
    return md5s


def origin_config(port: int, root: Path, md5s: dict[int, str]) -> str:
    """/etag/<size>/<any> and /plain/<size>/<any> serve the file of that size, the first with its
    MD5 as the ETag, the second with nginx's own; every request logged."""
    locations = "\n".join(
        f"        location /etag/{size}/ {{ etag off; add_header ETag '\"{md5}\"'; try_files /{size}.bin =404; }}\n"
        f"        location /plain/{size}/ {{ try_files /{size}.bin =404; }}"
        for size, md5 in md5s.items()
    )
    return f"""
http {{
{HTTP_COMMON}
    log_format origin '$request_uri $status $body_bytes_sent $request_method';
    server {{
        listen 127.0.0.1:{port};
        root {root};
        access_log @TMP@/origin-access.log origin;
{locations}
    }}
}}
"""


def write_rules(path: Path, origin_port: int) -> Path:
    rule = {"RuleNumber": 1, "Condition": {"HttpErrorCodeReturnedEquals": 404},
            "Redirect": {"RedirectType": "Mirror", "MirrorURL": f"http://127.0.0.1:{origin_port}/"}}
    path.write_text(json.dumps({"Buckets": [{"Name": BUCKET, "RoutingRules": [rule]}]}))
    return path


async def timed_get(port: int, path: str) -> loadgen.Answer:
    connection = loadgen.Connection(port)
    try:
        return await connection.request("GET", path, timeout=300)
    finally:
        connection.close()


def wait_stored(store: EmbeddedStore, key: str, size: int, within: float = 120) -> None:
    s3 = store.client()
    deadline = time.monotonic() + within
    while True:
        try:
            if s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size:
                return
        except ClientError:  # not there yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key} did not land within {within} s")
        time.sleep(0.2)


def measure(tmp: Path, processes: Processes, store: EmbeddedStore, rounds: int, cpus: Any = None,
            ca_from: Path | None = None) -> dict[str, Any]:
    """{size: {kind or "hit": [(first byte s, total s), ...]}} and the origin's GET counts."""
    store.create_buckets([BUCKET])
    md5s = write_bodies(tmp / "ttfb-origin")
    origin_port, plain_port, *proxy_ports = listen_ports(2 + len(KINDS))
    origin = Nginx("ttfb-origin", tmp / "ttfb-nginx", origin_config(origin_port, tmp / "ttfb-origin", md5s))
    origin.start(processes, [origin_port])
    rules = write_rules(tmp / "rules-ttfb.json", origin_port)
    plain = Mitmdump("ttfb-plain", store.endpoint, plain_port, tmp, tmp / "confdir-ttfb-plain",
                     options={"stream_large_bodies": STREAM_LARGE_BODIES}, cpus=cpus, ca_from=ca_from)
    plain.start(processes)
    proxies = {
        kind: Mitmdump(f"ttfb-{n}", store.endpoint, port, tmp, tmp / f"confdir-ttfb-{n}", rules, options, cpus=cpus,
                       ca_from=plain.confdir).start(processes)
        for n, ((kind, (_, options)), port) in enumerate(zip(KINDS.items(), proxy_ports, strict=True))
    }
    results: dict[str, Any] = {str(size): {kind: [] for kind in [*KINDS, *REFERENCES]} for size in SIZES}
    wrong: list[str] = []
    for n in range(rounds):
        for size in SIZES:
            for kind, (location, _) in KINDS.items():
                key = f"{location}/{size}/{uuid.uuid4().hex}"
                digest = hashlib.md5()
                answer = asyncio.run(_get_hashed(proxies[kind].port, f"/{BUCKET}/{key}", digest))
                if answer.status != 200 or answer.size != size or digest.hexdigest() != md5s[size]:
                    wrong.append(f"{kind} {size}: {answer.status}, {answer.size} bytes")
                results[str(size)][kind].append((answer.first_byte_s, answer.seconds, "etag" in answer.headers))
                wait_stored(store, key, size)
            hit = asyncio.run(timed_get(plain.port, f"/{BUCKET}/{key}"))
            results[str(size)]["hit"].append((hit.first_byte_s, hit.seconds, "etag" in hit.headers))
            missing = asyncio.run(timed_get(plain.port, f"/{BUCKET}/absent/{uuid.uuid4().hex}"))
            results[str(size)]["404"].append((missing.seconds, missing.seconds, False))
            direct = asyncio.run(timed_get(origin_port, f"/plain/{size}/direct"))
            results[str(size)]["origin"].append((direct.first_byte_s, direct.seconds, "etag" in direct.headers))
            if (hit.status, missing.status, direct.status) != (200, 404, 200):
                wrong.append(f"hit {hit.status}, 404 {missing.status}, origin {direct.status}")
        log(f"missttfb: round {n + 1} of {rounds}")
    log_text = (origin.workdir / "origin-access.log").read_text()
    gets = sum(1 for line in log_text.splitlines() if line.endswith(" GET"))
    expected = rounds * len(SIZES) * (len(KINDS) + 1)  # each miss, and the direct GET
    return {"results": results, "wrong": wrong, "origin_gets": gets, "expected_gets": expected}


async def _get_hashed(port: int, path: str, digest: Any) -> loadgen.Answer:
    connection = loadgen.Connection(port)
    try:
        return await connection.request("GET", path, timeout=300, sink=digest.update)
    finally:
        connection.close()


def medians(samples: list[tuple[float, float, bool]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def bounds(kinds: dict[str, Any]) -> tuple[float, float]:
    """(floor of a miss's first byte, context of its total), in seconds."""
    not_found = medians(kinds["404"])[1]
    return not_found + medians(kinds["origin"])[0], not_found + medians(kinds["hit"])[1]


def table(measured: dict[str, Any]) -> str:
    """Markdown: per size, the references, then each kind of miss: median first byte and total (ms),
    and their ratios to the floor and the context."""
    lines = ["| size | GET | first byte (ms) | ÷ floor | total (ms) | ÷ context | ETag |", "|---|---|---|---|---|---|---|"]
    for size, kinds in measured["results"].items():
        floor, context = bounds(kinds)
        lines.append(f"| {int(size) // MiB} MiB | floor (404 + origin's first byte); context (404 + hit) | "
                     f"{floor * 1000:.1f} | | {context * 1000:.1f} | | |")
        for kind, samples in kinds.items():
            first, total = medians(samples)
            etag = "yes" if all(s[2] for s in samples) else "no" if not any(s[2] for s in samples) else "some"
            if kind in REFERENCES:
                lines.append(f"| | {REFERENCES[kind]} | {first * 1000:.1f} | | {total * 1000:.1f} | | {etag} |")
            else:
                lines.append(f"| | **miss, {kind}** | {first * 1000:.1f} | {first / floor:.2f} | {total * 1000:.1f} | "
                             f"{total / context:.2f} | {etag} |")
    return "\n".join(lines)


def scenario_missttfb(stack: Any, report: Any, rounds: int = 5) -> None:
    """The rows of `make bench`: the 8 MiB miss whose ETag is known in advance against the targets,
    and the others as context; the whole table in results.json."""
    measured = measure(stack.tmp, stack.processes, stack.store, rounds, stack.cpus.proxy, stack.confdir)
    report.raw["missttfb"] = measured
    log("\n" + table(measured))
    add_rows(report.add, measured)


def add_rows(add: Add, measured: dict[str, Any]) -> None:
    failed = "; ".join(measured["wrong"])
    if measured["origin_gets"] != measured["expected_gets"]:
        failed += f" origin GETs {measured['origin_gets']}, expected {measured['expected_gets']}"
    for size, kinds in measured["results"].items():
        floor, context = bounds(kinds)
        for kind in KINDS:
            first, total = medians(kinds[kind])
            targeted = int(size) == 8 * MiB and kind == "etag"
            add("11", "missttfb", f"{int(size) // MiB} MiB miss ({kind}): first byte ÷ floor, total ÷ context",
                f"{first / floor:.2f} / {total / context:.2f} ({first * 1000:.0f} ÷ {floor * 1000:.0f} ms, "
                f"{total * 1000:.0f} ÷ {context * 1000:.0f} ms)",
                f"≤ {TARGET} / ≤ {TARGET}" if targeted else "",
                (first / floor <= TARGET and total / context <= TARGET) if targeted else None,
                failed=failed if targeted else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.missttfb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    os.chdir(Path(__file__).resolve().parent.parent)
    tmp = Path(tempfile.mkdtemp(prefix="backorigin-missttfb-"))
    processes = Processes()
    store = EmbeddedStore(tmp / "store", free_ports(1, with_grpc=True)[0])
    store.start(log_path=tmp / "weed.log")
    try:
        measured = measure(tmp, processes, store, args.rounds)
    finally:
        processes.close()
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(measured))
    print(f"origin GETs {measured['origin_gets']} (expected {measured['expected_gets']}); wrong answers: {measured['wrong'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(measured, indent=2) + "\n")
    return 1 if measured["wrong"] or measured["origin_gets"] != measured["expected_gets"] else 0


if __name__ == "__main__":
    sys.exit(main())
