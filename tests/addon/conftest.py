"""The addon under mitmproxy's own test helpers (taddons, tflow), in this process: the scripted
origin answers origin fetches; no store runs, so flows carry the store's answers themselves and
the store probe finds nobody at their address (the response hook then decides, as for a replay)."""

from __future__ import annotations

import pytest
from mitmproxy.test import taddons, tflow, tutils

from backorigin.addon import BackOrigin
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.replies import error_body
from backorigin.tools.embedded_store import free_ports
from backorigin.writeback.proxyspools import release

NOBODY = free_ports(1)[0]  # a loopback port nothing listens on: the store probe cannot ask


def store_answer(bucket: str, key: str, status: int = 404, code: str = "NoSuchKey", method: str = "GET",
                 headers: dict[str, str] | None = None):
    """A flow as a store at NOBODY answered it (an S3 error body unless `code` is empty)."""
    body = error_body(code, "m", ObjectRef(bucket, key), "r") if code and method != "HEAD" else b""
    return tflow.tflow(
        req=tutils.treq(host="127.0.0.1", port=NOBODY, path=f"/{bucket}/{key}".encode(), method=method.encode(), content=b"",
                        headers=((b"host", f"127.0.0.1:{NOBODY}".encode()),)),
        resp=tutils.tresp(status_code=status, content=body,
                          headers=tuple((k.encode(), v.encode()) for k, v in (headers or {}).items())),
    )


@pytest.fixture
def addon():
    return BackOrigin()


@pytest.fixture
def tctx(addon, rules_file, tmp_path):
    with taddons.context(addon) as context:
        # nothing listens where write-backs go: shutdown leaves them spooled at once
        context.configure(addon, backorigin_rules=str(rules_file), backorigin_spool_dir=str(tmp_path / "spool"),
                          backorigin_stores=[f"http://127.0.0.1:{NOBODY}"],
                          backorigin_origin_timeout="5", backorigin_shutdown_timeout="0.1")
        yield context
    release(tmp_path / "spool")
