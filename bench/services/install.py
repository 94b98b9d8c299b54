"""What the bench needs that a fresh clone lacks, installed when missing: nginx, wrk and nginx's
stream module from Debian's packages (apt-get), py-spy into the venv (pip, for --profile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.report import log
from bench.services.nginx import STREAM_MODULE

APT_PACKAGES = ("nginx", "wrk", "libnginx-mod-stream")


def _missing_tools() -> list[str]:
    missing = []
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx")
    if not shutil.which("wrk"):
        missing.append("wrk")
    if not STREAM_MODULE.exists():
        missing.append("libnginx-mod-stream")
    return missing


def ensure_debian_packages() -> None:
    """nginx, wrk and nginx's stream module from Debian's packages, installed when missing."""
    missing = _missing_tools()
    if not missing:
        return
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise SystemExit(f"bench: needs {' '.join(APT_PACKAGES)} (Debian packages) and is not root; install them first")
        prefix = ["sudo", "-n"]
    log(f"installing {' '.join(APT_PACKAGES)} with apt-get (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = subprocess.run(["apt-cache", "policy", *APT_PACKAGES], capture_output=True, text=True, env=env)
    if "Candidate: (none)" in policy.stdout or "Candidate:" not in policy.stdout:
        subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    # Debian's nginx package would start a service on port 80 unless policy-rc.d forbids it;
    # --no-install-recommends keeps the install small. Our own nginx processes never use
    # /etc/nginx: each gets its own configuration and prefix.
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
        check=True, env=env, timeout=600, stdout=subprocess.DEVNULL,
    )
    still = _missing_tools()
    if still:
        raise SystemExit(f"bench: still missing after apt-get install: {', '.join(still)}")


def ensure_py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if not found.exists():
        log("installing py-spy into the venv (pip)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True, timeout=300)
    return str(found)
