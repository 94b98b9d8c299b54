"""Summaries of py-spy raw (collapsed-stack) profiles: where the samples of mitmdump+addon go.

`python -m bench.profile bench/out/profile-hit-1k.txt` prints the summary of one profile. The raw
files also load into speedscope or flamegraph.pl as they are.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")

CATEGORIES = (
    ("addon/ (this project)", ("/addon/",)),
    ("mitmproxy", ("/mitmproxy/", "/mitmproxy_rs/")),
    ("aiohttp/yarl/multidict (store check and origin fetch)", ("/aiohttp/", "/yarl/", "/multidict/", "/aiohappyeyeballs/",
                                                               "/propcache/")),
    ("httpx/httpcore/anyio (before aiohttp)", ("/httpx/", "/httpcore/", "/anyio/", "/sniffio/")),
    ("h11 (HTTP/1 parsing: mitmproxy, the miss server)", ("/h11/",)),
    ("boto3/botocore/urllib3 (write-back)", ("/boto3/", "/botocore/", "/urllib3/", "/s3transfer/", "/tenacity/")),
    ("asyncio", ("/asyncio/",)),
    ("other stdlib", ("/lib/python3",)),
)


# label -> test on (function name, file path) of any frame in a stack
UNDER = {
    "Python logging calls (record creation and handlers, any library)": lambda f, p: "/logging/__init__.py" in p,
    "mitmproxy's add_log event: one sync dispatch to every addon per log record":
        lambda f, p: f.startswith("AddonManager.trigger (") or f.startswith("LegacyLogEvents."),
    "botocore/urllib3 (write-back PutObject)": lambda f, p: "/botocore/" in p or "/urllib3/" in p,
    "aiohttp (store check and origin fetch)": lambda f, p: "/aiohttp/" in p,
    "addon/ code (and everything it calls)": lambda f, p: "/addon/" in p,
}


def category(path: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in path for n in needles) and not ("/site-packages/" in path and name == "other stdlib"):
            return name
    return "other"


def _parse(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    path = match["file"]
    short = "/".join(path.split("/")[-2:])
    return f"{match['func']} ({short})", path


def summarise(path: Path, top: int = 15) -> dict:
    total = 0
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    addon_inclusive: Counter[str] = Counter()
    under: Counter[str] = Counter()  # samples whose stack passes through these
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        thread = re.sub(r"_\d+$", "", thread)  # pool threads: one line per pool
        parsed = [_parse(f) for f in frames[1:]]
        if not parsed:
            continue
        total += count
        threads[thread] += count
        leaf_name, leaf_path = parsed[-1]
        self_time[leaf_name] += count
        categories[category(leaf_path)] += count
        for name in {name for name, _ in parsed}:
            inclusive[name] += count
        for name in {name for name, p in parsed if "/addon/" in p}:
            addon_inclusive[name] += count
        for label, test in UNDER.items():
            if any(test(f, p) for f, p in parsed):
                under[label] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%" if total else "  -  "

    lines = [f"{path.name}: {total} samples (non-idle, all threads)", "", "by thread:"]
    lines += [f"  {pct(n)}  {name}" for name, n in threads.most_common()]
    lines += ["", "self time by code (leaf frame):"]
    lines += [f"  {pct(n)}  {name}" for name, n in categories.most_common()]
    lines += ["", "inclusive time under:"]
    lines += [f"  {pct(under[label])}  {label}" for label in UNDER]
    lines += ["", f"top {top} functions by self time:"]
    lines += [f"  {pct(n)}  {name}" for name, n in self_time.most_common(top)]
    lines += ["", f"top {top} functions by inclusive time:"]
    lines += [f"  {pct(n)}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "addon/ functions by inclusive time:"]
    lines += [f"  {pct(n)}  {name}" for name, n in addon_inclusive.most_common(top)]
    return {
        "samples": total,
        "threads": {k: round(100 * v / total, 1) for k, v in threads.items()} if total else {},
        "categories": {k: round(100 * v / total, 1) for k, v in categories.items()} if total else {},
        "under": {k: round(100 * under[k] / total, 1) for k in UNDER} if total else {},
        "addon_inclusive": {k: round(100 * v / total, 1) for k, v in addon_inclusive.most_common(top)} if total else {},
        "text": "\n".join(lines) + "\n",
    }


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summarise(Path(name))["text"])
