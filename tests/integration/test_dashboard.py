"""The dashboard at ``/ui/``, driven in a real Chromium through Playwright.

Debian's ``chromium`` package is the browser (Playwright's own browser download
cannot work here): the tests launch it by path and are skipped, saying why,
where it or the ``playwright`` package is missing. Each test records every
request the page makes and checks that none leaves the node's origin, and
saves screenshots under its temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engines.kv import KVClient
from legion.runtime import local_cluster as cluster_processes
from tests.conftest import LocalCluster

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the skip below says so
    sync_playwright = None

pytestmark = pytest.mark.skipif(
    sync_playwright is None or not os.access(CHROMIUM, os.X_OK),
    reason="browser tests need Debian's chromium package (apt-get install chromium) and the playwright package",
)

PARTITIONS = 64
DOWN_WITHIN_MS = 5_000
UI_TIMEOUT_MS = 15_000


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_dashboard(browser: Browser, base_url: str) -> tuple[Page, list[str]]:
    """A fresh page on ``base_url``/ui/, and the list every request the page makes is appended to."""
    page = browser.new_context().new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(base_url + "/ui/")
    return page, requests


def sign_in(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#sign-in button[type=submit]")


def assert_same_origin(requests: list[str], base_url: str, token: str) -> None:
    origin = urlsplit(base_url)
    assert requests, "the page made no request at all"
    foreign = [url for url in requests if (urlsplit(url).scheme, urlsplit(url).netloc) != (origin.scheme, origin.netloc)]
    assert not foreign, f"the page fetched from other origins: {foreign[:5]}"
    assert not [url for url in requests if token in url], "the token appeared in a URL"


def primaries_shown(page: Page, node_id: str) -> int:
    return page.locator(f'#ring .partition[data-primary="{node_id}"]').count()


def test_dashboard_shows_the_ring_members_and_engines_and_follows_add_node_and_kill_9(
    browser: Browser, local_cluster: LocalCluster, tmp_path: Path
):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    n1 = local_cluster.node("n1")["url"]
    with local_cluster.node_client("n1") as client:
        KVClient(client).put("greeting", b"hello from the dashboard test", content_type="text/plain")
    page, requests = open_dashboard(browser, n1)
    sign_in(page, local_cluster.token)

    members = page.locator("#members tbody tr")
    expect(page.locator('#members tr[data-status="up"]')).to_have_count(3, timeout=UI_TIMEOUT_MS)
    assert sorted(members.evaluate_all("rows => rows.map(r => r.dataset.node)")) == ["n1", "n2", "n3"]
    expect(page.locator("#ring .partition")).to_have_count(PARTITIONS)
    status = local_cluster.client.status()
    # The ring is the placement: every wedge coloured by its primary, replicas in its title (hover).
    for partition in (0, 17, 63):
        wedge = page.locator(f'#ring .partition[data-partition="{partition}"]')
        nodes = status["placement"][partition]
        assert wedge.get_attribute("data-primary") == nodes[0]
        assert all(replica in wedge.locator("title").text_content() for replica in nodes[1:])
    assert sum(primaries_shown(page, n) for n in ("n1", "n2", "n3")) == PARTITIONS
    # The KV panel, declared by the engine: its figures per node, and a lookup that works.
    kv_panel = page.locator('.engine-panel[data-engine="kv"]')
    expect(kv_panel.locator('tr[data-figure="keys"] td.total')).to_have_text("3", timeout=UI_TIMEOUT_MS)
    kv_panel.locator("input[name=key]").fill("greeting")
    kv_panel.locator("button[type=submit]").click()
    expect(kv_panel.locator(".lookup-result")).to_contain_text("hello from the dashboard test")
    expect(page.locator('.engine-panel[data-engine="search"]')).to_have_count(1)
    expect(page.locator('.engine-panel[data-engine="mr"]')).to_have_count(1)
    page.screenshot(path=str(shots / "1-signed-in.png"), full_page=True)

    assert primaries_shown(page, "n4") == 0
    cluster_processes.add_node(local_cluster.directory)
    expect(page.locator('#members tr[data-node="n4"][data-status="up"]')).to_have_count(1, timeout=UI_TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelectorAll('#ring .partition[data-primary=\"n4\"]').length > 0", timeout=UI_TIMEOUT_MS
    )
    expected = next(m["primary"] for m in local_cluster.client.status()["members"] if m["id"] == "n4")
    expect(page.locator('#ring .partition[data-primary="n4"]')).to_have_count(expected, timeout=UI_TIMEOUT_MS)
    assert expected > 0
    page.screenshot(path=str(shots / "2-node-added.png"), full_page=True)

    victim = local_cluster.node("n2")
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    expect(page.locator('#members tr[data-node="n2"][data-status="down"]')).to_have_count(1, timeout=DOWN_WITHIN_MS)
    print(f"dashboard showed n2 down {time.monotonic() - killed:.1f} s after kill -9; screenshots in {shots}")
    page.screenshot(path=str(shots / "3-node-down.png"), full_page=True)

    assert_same_origin(requests, n1, local_cluster.token)
    assert sorted(p.name for p in shots.iterdir()) == ["1-signed-in.png", "2-node-added.png", "3-node-down.png"]


@pytest.mark.cluster(nodes=1, replicas=1)
def test_a_wrong_token_shows_an_error_and_no_data(browser: Browser, local_cluster: LocalCluster, tmp_path: Path):
    url = local_cluster.node("n1")["url"]
    page, requests = open_dashboard(browser, url)
    sign_in(page, "not-the-token")
    expect(page.locator("#error")).to_contain_text("refused", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#app")).to_be_hidden()
    assert page.locator("#members tbody tr").count() == 0
    assert page.locator("#ring .partition").count() == 0
    assert "n1" not in page.locator("body").inner_text()
    assert page.evaluate("() => sessionStorage.getItem('legion.token')") is None
    page.screenshot(path=str(tmp_path / "wrong-token.png"), full_page=True)
    # The right token then works, and survives a reload (session storage) without being asked again.
    sign_in(page, local_cluster.token)
    expect(page.locator('#members tr[data-status="up"]')).to_have_count(1, timeout=UI_TIMEOUT_MS)
    page.reload()
    expect(page.locator('#members tr[data-status="up"]')).to_have_count(1, timeout=UI_TIMEOUT_MS)
    assert page.evaluate("() => document.cookie") == ""
    assert_same_origin(requests, url, local_cluster.token)
