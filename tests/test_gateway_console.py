"""The console's Usage page in Chromium: a signed-in admin sees what the gateway metered
(totals and the chart), the keys with their quota use, and revokes one -- audited under
their name, refused by the gateway at once. Signed out, the page asks for sign-in."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the `dev` extra (playwright)")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make setup`)")

from mmserve.console import ConsoleSettings  # noqa: E402
from mmserve.console.server import ConsoleServer, free_port  # noqa: E402
from mmserve.gateway.store import STORE_ENV  # noqa: E402
from test_gateway import create_key, start_gateway  # noqa: E402

ADMIN_KEY = "usage-page-admin-key-0123456789"


@pytest.fixture(scope="module")
def metered(server, repository, tmp_path_factory):
    """A gateway and a console over one store (the console finds it through $MMSERVE_GATEWAY_STORE)."""
    folder = tmp_path_factory.mktemp("usage-page")
    store, audit = str(folder / "gateway.sqlite3"), folder / "audit.jsonl"
    previous = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = store
    gateway = start_gateway(server, repository, store)
    key = create_key(store, repository, audit, "--tenant", "acme", "--products", "text_embed", "--quota", "100")
    headers = {"Authorization": f"Bearer {key['key']}"}
    for texts in (["a"], ["b", "c"], ["d", "e", "f"]):
        assert httpx.post(gateway.url + "/v1/embeddings", json={"model": "text_embed", "input": texts},
                          headers=headers).status_code == 200
    assert httpx.post(gateway.url + "/v1/embeddings", json={"model": "image_embed", "input": "x"},
                      headers=headers).status_code == 403
    settings = ConsoleSettings(server=server.grpc_url, repository=repository, port=free_port(),
                               metrics_url=server.metrics_url, admin_key=ADMIN_KEY, audit_log=audit,
                               sample_interval_s=5.0)
    try:
        with ConsoleServer(settings) as console:
            yield console, gateway, key, audit
    finally:
        gateway.stop()
        if previous is None:
            os.environ.pop(STORE_ENV, None)
        else:
            os.environ[STORE_ENV] = previous


def test_usage_page_shows_usage_and_revokes_a_key(metered, tmp_path: Path):
    console, gateway, key, audit = metered
    errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            base = console.url.rstrip("/")
            tab.goto(base + "/usage")
            assert "/signin" in tab.url  # billing data and keys: admin only
            tab.fill("input[name=name]", "tester")
            tab.fill("input[name=admin_key]", ADMIN_KEY)
            tab.click("form.stack button[type=submit]")
            tab.wait_for_url(re.compile(r"/usage$"))
            rows = tab.locator("#usage-totals tbody tr").all_inner_texts()
            assert any(r.split("\t")[:6] == ["acme", "text_embed", "200", "3", "6", r.split("\t")[5]] for r in rows), rows
            assert any(r.split("\t")[:4] == ["acme", "-", "403", "1"] for r in rows), rows
            tab.wait_for_selector("#usage-chart .uplot")  # the chart drew (uPlot, vendored)
            assert tab.locator("#usage-chart").get_attribute("data-drawn") == "1"
            row = tab.locator(f"#keys-table tr:has-text('{key['id']}')")
            assert "100 (6)" in row.inner_text() and "active" in row.inner_text()
            tab.screenshot(path=str(tmp_path / "usage.png"), full_page=True)
            row.locator("button", has_text="Revoke").click()
            tab.wait_for_url(re.compile(r"/usage"))
            assert "revoked" in tab.locator(f"#keys-table tr:has-text('{key['id']}')").inner_text()
        finally:
            browser.close()
    assert not errors, errors
    refused = httpx.post(gateway.url + "/v1/embeddings", json={"model": "text_embed", "input": "g"},
                         headers={"Authorization": f"Bearer {key['key']}"})
    assert refused.status_code == 401
    records = audit.read_text()
    assert '"action":"keys.revoke"' in records and "console:tester" in records
