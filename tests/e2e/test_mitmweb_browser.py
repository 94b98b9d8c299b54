"""mitmweb shows why, in a real browser: the demo under mitmweb (`backorigin demo --ui web`), two
misses through it, then Debian's Chromium, driven by Playwright, reads the flow list's comments and
the `backorigin` view of the mirrored miss: what happened, and each rule tried with the condition
that did not hold. Its screenshots are the docs' (docs/mitmweb-flows.png, docs/mitmweb-decision.png):
`UPDATE_SCREENSHOTS=1` writes them there, otherwise they go to the test's folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from backorigin.tools.embedded_store import free_ports
from tests.e2e.test_demo import Demo
from tests.support import REPO, http_get, wait_for

CHROMIUM = Path("/usr/bin/chromium")
# what Chromium needs on a machine with no display, no sandbox support and no network
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.fixture
def web_demo(tmp_path):
    proxy_port, origin_port, web_port = free_ports(3)
    (store_port,) = free_ports(1, with_grpc=True)
    demo = Demo(tmp_path, "--ui", "web", "--web-port", str(web_port), "--proxy-port", str(proxy_port),
                "--store-port", str(store_port), "--origin-port", str(origin_port), "--set", "web_open_browser=false")
    wait_for(lambda: f"Web server listening at http://127.0.0.1:{web_port}/" in demo.text(), within=30)
    yield demo, f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{web_port}/", origin_port
    assert demo.ctrl_c() == 0, demo.text()


def test_mitmweb_says_what_happened_and_why_in_a_browser(web_demo, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    demo, proxy, web, origin_port = web_demo
    assert http_get(f"{proxy}/example-bucket/hello.txt")[0] == 200
    assert http_get(f"{proxy}/example-bucket/images/missing.svg")[0] == 404
    shots = REPO / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900})
        try:
            page = browser.new_page()
            page.goto(web)
            mirrored = page.locator("tr", has_text="/example-bucket/hello.txt")
            expect(mirrored).to_contain_text(f"mirrored · rule 2 · http://127.0.0.1:{origin_port}/hello.txt")
            expect(page.locator("tr", has_text="/example-bucket/images/missing.svg")).to_contain_text(
                f"origin 404 · rule 1 · http://127.0.0.1:{origin_port}/images/missing.svg")
            page.screenshot(path=str(shots / "mitmweb-flows.png"))

            mirrored.click()
            view = page.locator(".contentview")
            expect(view).to_contain_text("what happened: mirrored")
            expect(view).to_contain_text("rules tried:")
            expect(view).to_contain_text("rule 1: KeyPrefixEquals 'images/': the key does not start with it")
            expect(view).to_contain_text("rule 2: every condition holds: this rule acts")
            expect(view).to_contain_text(f"origin URL: http://127.0.0.1:{origin_port}/hello.txt")
            page.screenshot(path=str(shots / "mitmweb-decision.png"))
        finally:
            browser.close()
    assert (shots / "mitmweb-decision.png").stat().st_size > 10_000
    if shots != tmp_path:
        shutil.copy(shots / "mitmweb-decision.png", tmp_path / "mitmweb-decision.png")
