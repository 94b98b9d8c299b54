"""docs/dashboard.png: the panels of docs/dashboard.json drawn from a real run.

No Grafana server can be installed here (Debian does not package it, npm and PyPI have only its
libraries), so this runs what a Grafana would look at instead: two proxies in front of SeaweedFS
with nginx as the origin, Prometheus (Debian's package) scraping their metrics every second, and
a few minutes of traffic: new keys and hits, the same keys on both proxies at once (the fleet's
leases), a burst of large objects (the write-back backlog), the origin stopped (errors, the circuit)
and started again. Then every panel's queries, exactly as the dashboard has them, go to
Prometheus's query_range API, and matplotlib draws the answers on the dashboard's grid.

    python -m bench.dashboard [--seconds 150] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from bench.report import log
from bench.services.mitmdump import Mitmdump
from bench.services.nginx import Nginx, origin_config
from bench.services.processes import Processes, wait_for_port
from tests.support import REPO, mirror_rule, write_rules

DASHBOARD = REPO / "docs" / "dashboard.json"
BUCKET = "dashboard-bucket"
KIB = 1024


def ensure_prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        log("installing prometheus with apt-get (Debian's package)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"], check=True, env=env,
                       stdout=subprocess.DEVNULL, timeout=600)
        found = shutil.which("prometheus") or "/usr/bin/prometheus"
    return found


def start_prometheus(processes: Processes, workdir: Path, targets: list[int]) -> int:
    port = free_ports(1)[0]
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "backorigin", "static_configs": [{"targets": [f"127.0.0.1:{t}" for t in targets]}]}],
    }))
    process = processes.start("prometheus", [ensure_prometheus(), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                                             f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=open(workdir / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    wait_for_port(port, process, "prometheus")
    return port


def get(url: str, timeout: float = 60) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, http.client.HTTPException):  # a broken answer: counted by the proxy, not here
        return 0


class Traffic:
    """Clients in threads, each phase for a while: what the dashboard is to show."""

    def __init__(self, proxies: list[str]) -> None:
        self.proxies = proxies
        self.stop = threading.Event()
        self.keys: list[str] = []
        self.serial = 0
        self.lock = threading.Lock()

    def new_key(self, kind: str) -> str:
        with self.lock:
            self.serial += 1
            return f"{kind}/{self.serial}"

    def client(self, n: int, new_share: float, kind: str = "obj") -> None:
        proxy = self.proxies[n % len(self.proxies)]
        while not self.stop.is_set():
            if not self.keys or (self.serial % 100) / 100 < new_share:
                key = self.new_key(kind)
                if get(f"{proxy}/{BUCKET}/{key}") == 200:
                    with self.lock:
                        self.keys.append(key)
            else:
                get(f"{proxy}/{BUCKET}/{self.keys[(self.serial * 7 + n) % len(self.keys)]}")
                with self.lock:
                    self.serial += 1
            time.sleep(0.05)

    def together(self, count: int) -> None:
        """The same new key through every proxy at once: one fetches, the others wait for it."""
        for _ in range(count):
            key = self.new_key("big")
            threads = [threading.Thread(target=get, args=(f"{proxy}/{BUCKET}/{key}",)) for proxy in self.proxies for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    def run(self, seconds: float, clients: int, new_share: float) -> None:
        self.stop.clear()
        threads = [threading.Thread(target=self.client, args=(n, new_share), daemon=True) for n in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(60)


def run_scenario(workdir: Path, processes: Processes, seconds: float) -> tuple[int, float, float]:
    """The run; returns Prometheus's port and the run's start and end (epoch seconds)."""
    origin_root = workdir / "origin"
    origin_root.mkdir()
    (origin_root / "obj.bin").write_bytes(os.urandom(256 * KIB))
    (origin_root / "big.bin").write_bytes(os.urandom(24 * 1024 * KIB))
    origin_port = free_ports(1)[0]
    files = {"obj": "obj.bin", "big": "big.bin"}
    origin = Nginx("origin", workdir / "nginx-origin", origin_config(origin_port, origin_root, files, rates={"big": "16m"}))
    origin.start(processes, [origin_port])
    store = EmbeddedStore(workdir / "store", free_ports(1, with_grpc=True)[0])
    store.start()
    try:
        store.create_buckets([BUCKET])
        rules = write_rules(workdir / "rules.json", {BUCKET: [mirror_rule(1, f"http://127.0.0.1:{origin_port}/")]})
        metrics = free_ports(2)
        proxies = []
        for n, port in enumerate(free_ports(2)):
            proxy = Mitmdump(f"p{n}", store.endpoint, port, workdir, workdir / f"confdir-{n}", rules,
                             {"backorigin_metrics_port": str(metrics[n]), "backorigin_origin_timeout": "3",
                              "backorigin_breaker_cooldown": "15", "backorigin_writeback_workers": "1"})
            proxies.append(proxy.start(processes))
        prometheus = start_prometheus(processes, workdir, metrics)
        started = time.time()
        traffic = Traffic([proxy.url for proxy in proxies])
        phase = seconds / 5
        log("phase 1: new keys and hits")
        traffic.run(phase, clients=6, new_share=0.6)
        log("phase 2: the same large keys on both proxies at once (leases), the write-back backlog")
        traffic.together(8)
        traffic.run(phase / 2, clients=6, new_share=0.3)
        log("phase 3: the origin stopped")
        processes.stop(origin.process)
        traffic.run(phase, clients=6, new_share=0.5)
        log("phase 4: the origin back")
        origin.start(processes, [origin_port])
        traffic.run(phase * 1.5, clients=6, new_share=0.2)
        time.sleep(3)  # the last scrapes
        return prometheus, started, time.time()
    finally:
        store.stop()


def query_range(port: int, expr: str, start: float, end: float, step: float) -> list[tuple[dict, list[tuple[float, float]]]]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query_range?{query}", timeout=30) as answer:
        data = json.loads(answer.read())
    return [(series["metric"], [(float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")])
            for series in data["data"]["result"]]


def legend(template: str, labels: dict) -> str:
    return template.replace("{{", "{").replace("}}", "}").format_map(_Missing(labels)) if template else str(labels)


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return ""


def render(port: int, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.9, 0.42
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 1.0), facecolor="#111217")
    fig.suptitle(f"{dashboard['title']}: docs/dashboard.json drawn from a real run's Prometheus ({end - start:.0f} s; "
                 "Grafana itself cannot be installed here)", color="#d8d9da", fontsize=13, x=0.01, ha="left")
    step = 2.0
    for panel in panels:
        g = panel["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        bottom, height = 1 - (g["y"] + g["h"]) / rows, g["h"] / rows
        ax = fig.add_axes((left + 0.022, bottom * 0.94 + 0.02, width - 0.03, height * 0.94 - 0.058), facecolor="#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        for side in ax.spines.values():
            side.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        drawn = 0
        for target in panel["targets"]:
            for labels, points in query_range(port, target["expr"], start, end, step):
                if not points:
                    continue
                if panel["type"] == "stat":
                    value = points[-1][1]
                    ax.text(0.5, 0.5, f"{value * 100:.0f}%" if unit == "percentunit" else f"{value:.3g}",
                            color="#73bf69" if value >= 0.9 else "#ff9830", fontsize=34, ha="center", va="center",
                            transform=ax.transAxes)
                    ax.plot([t - start for t, _ in points], [v for _, v in points], color="#73bf69", alpha=0.3)
                else:
                    ax.plot([t - start for t, _ in points], [v for _, v in points], linewidth=1.3,
                            label=legend(target.get("legendFormat", ""), labels))
                drawn += 1
        if drawn == 0:
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", fontsize=12, ha="center", va="center", transform=ax.transAxes)
        elif panel["type"] != "stat":
            ax.legend(fontsize=6.5, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da",
                      ncol=max(1, math.ceil(drawn / 4)))
        ax.set_xlim(0, end - start)
        ax.set_xlabel("seconds into the run", color="#8e8e8e", fontsize=7)
        ax.set_ylabel({"percentunit": "share", "reqps": "per second", "ops": "per second", "s": "seconds",
                       "bytes": "bytes"}.get(unit, ""), color="#8e8e8e", fontsize=7)
        if panel["type"] == "stat":
            ax.set_yticks([])
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    log(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="length of the traffic")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="backorigin-dashboard-") as tmp:
        try:
            port, start, end = run_scenario(Path(tmp), processes, args.seconds)
            render(port, start, end, args.out)
        finally:
            processes.close()


if __name__ == "__main__":
    main()
