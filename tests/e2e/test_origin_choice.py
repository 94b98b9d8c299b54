"""What a client may not choose about the origin: its host through `${bucket}` (refused at load
unless `${bucket}` is the first label before a fixed domain, or in the path), and where the
rule's headers go when the origin redirects (only to the same scheme, host and port)."""

from __future__ import annotations

import json

import pytest

from tests.origin_server import ScriptedOrigin, elsewhere
from tests.support import DATA, Mitmdump, http_get, mirror_rule, write_rules


@pytest.mark.parametrize("name", ["bucket-as-whole-host.json", "bucket-at-end-of-host.json"])
def test_a_bucket_placeholder_that_would_choose_the_host_stops_mitmdump(tmp_path, store, name):
    path = DATA / "bad-rules" / name
    proxy = Mitmdump(f"reverse:{store.endpoint}", path, tmp_path)
    with pytest.raises(RuntimeError, match="mitmdump exited with 1"):
        proxy.start()
    expected = json.loads((DATA / "bad-rules" / "expected.json").read_text())[name]
    assert f"{path}: {expected}" in proxy.log()


def test_a_redirect_to_another_port_of_the_origin_host_gets_no_rule_headers(tmp_path, store, unique):
    origin, other = ScriptedOrigin().start(), ScriptedOrigin().start()  # both on 127.0.0.1, other ports
    rules = write_rules(tmp_path / "rules.json", {"mirror-bucket": [
        mirror_rule(1, f"{origin.base}/dir1/", MirrorHeaders={"Set": [{"Key": "x-token", "Value": "t0k"}]})]})
    proxy = Mitmdump(f"reverse:{store.endpoint}", rules, tmp_path).start()
    try:
        status, _, _ = http_get(f"{proxy.url}/mirror-bucket/{elsewhere(f'{other.base}/dir1/ok/{unique}')}/{unique}")
    finally:
        proxy.stop()
        origin.stop()
        other.stop()
    assert status == 200
    assert origin.received and {k.lower(): v for k, v in origin.received[0].headers.items()}.get("x-token") == "t0k"
    assert other.received and all("x-token" not in {k.lower() for k in seen.headers} for seen in other.received)
