"""The console's Usage page in Chromium: a signed-in admin sees what the gateway metered
(totals and the chart), the keys with their quota use, and revokes one -- audited under
their name, refused by the gateway at once. Signed out, the page asks for sign-in.

Creating a key from the page (over HTTP, and in Chromium): the key works at the real
gateway, is in the answer once and nowhere in the audit log; the form is refused like
revoke (CSRF before the body, then sign-in), and a bad option is a 400 naming it."""
from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the `dev` extra (playwright)")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make setup`)")

from mmserve.console import ConsoleSettings  # noqa: E402
from mmserve.console.server import ConsoleServer, free_port  # noqa: E402
from mmserve.gateway.keys import KEY_PREFIX  # noqa: E402
from mmserve.gateway.store import STORE_ENV, open_store  # noqa: E402
from test_console_security import csrf_of, raw_post  # noqa: E402
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

            # A new key from the page's form: shown once, copied, listed by id.
            tab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
            tab.fill("#create-key input[name=tenant]", "umbrella")
            tab.check("#create-key input[name=products][value=text_embed]")
            tab.fill("#create-key input[name=quota]", "10")
            tab.click("#create-key button[type=submit]")
            tab.wait_for_selector("#new-key")
            new_key = tab.locator("#new-key").inner_text().strip()
            assert new_key.startswith(KEY_PREFIX) and new_key not in tab.url
            shown = tab.locator("#created-key").inner_text()
            assert "will not be shown again" in shown and "10 items/month" in shown
            new_id = tab.locator("#created-key p code").first.inner_text()
            assert "active" in tab.locator(f"#keys-table tr:has-text('{new_id}')").inner_text()
            tab.click("#copy-key")
            playwright_api.expect(tab.locator("#copy-key")).to_have_text("Copied")
            assert tab.evaluate("navigator.clipboard.readText()") == new_key
            tab.screenshot(path=str(tmp_path / "usage-created.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    refused = httpx.post(gateway.url + "/v1/embeddings", json={"model": "text_embed", "input": "g"},
                         headers={"Authorization": f"Bearer {key['key']}"})
    assert refused.status_code == 401
    records = audit.read_text()
    assert '"action":"keys.revoke"' in records and "console:tester" in records
    answered = httpx.post(gateway.url + "/v1/embeddings", json={"model": "text_embed", "input": "g"},
                          headers={"Authorization": f"Bearer {new_key}"})
    assert answered.status_code == 200, answered.text
    assert new_id in records and new_key not in records


# --- creating a key from the page (HTTP) ---------------------------------------------------------

NEW_KEY = re.compile(r'<code id="new-key">([^<]+)</code>')


@contextlib.contextmanager
def signed_in_browser(console, name: str = "ada") -> Iterator[tuple[httpx.Client, str]]:
    """A signed-in visitor and its session's CSRF token."""
    with httpx.Client(base_url=console.url, timeout=60.0) as browser:
        token = csrf_of(browser.get("/signin").text)
        answer = browser.post("/signin", params={"csrf_token": token}, data={"admin_key": ADMIN_KEY, "name": name})
        assert answer.status_code == 303, answer.text
        yield browser, csrf_of(browser.get("/usage").text)


def key_ids() -> set[str]:
    async def read() -> set[str]:
        store = open_store(None, create=False)
        try:
            return {record.id for record in await store.keys()}
        finally:
            await store.close()

    return asyncio.run(read())


def test_an_admin_creates_a_key_that_the_gateway_accepts(metered, caplog):
    console, gateway, _, audit = metered
    caplog.set_level(logging.INFO)
    before = key_ids()
    with signed_in_browser(console) as (browser, token):
        answer = browser.post("/usage/keys", params={"csrf_token": token},
                              data={"tenant": "globex", "products": ["text_embed", "image_embed"], "rate": "50/s",
                                    "quota": "1k/month", "expires": "2099-12-31"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    page = answer.text
    key = NEW_KEY.search(page).group(1)
    assert page.count(key) == 1 and "will not be shown again" in page
    assert key not in str(answer.url) and all(key not in value for value in answer.headers.values())
    (new_id,) = key_ids() - before
    assert re.search(rf'<table class="keys" id="keys-table">.*<code>{new_id}</code>', page, re.DOTALL)
    assert "50 requests/s" in page and "1000 items/month" in page
    answered = httpx.post(gateway.url + "/v1/embeddings", json={"model": "text_embed", "input": ["hello"]},
                          headers={"Authorization": f"Bearer {key}"})
    assert answered.status_code == 200, answered.text
    not_granted = httpx.post(gateway.url + "/v1/embeddings", json={"model": "sentiment", "input": "x"},
                             headers={"Authorization": f"Bearer {key}"})
    assert not_granted.status_code == 403, not_granted.text  # the products ticked, no others
    records = audit.read_text()
    assert key not in records and key not in caplog.text
    created = [line for line in records.splitlines() if '"keys.create"' in line and new_id in line]
    assert created and all("console:ada" in line for line in created) and '"result":"ok"' in created[-1]


def test_creating_a_key_is_refused_like_revoking(metered):
    console, _, fixture_key, audit = metered
    before, records = key_ids(), audit.read_text()
    form = {"tenant": "mallory", "products": "text_embed"}
    with httpx.Client(base_url=console.url, timeout=60.0) as anonymous:
        token = csrf_of(anonymous.get("/").text)
        for path in ("/usage/keys", f"/usage/keys/{fixture_key['id']}/revoke"):
            assert anonymous.post(path, params={"csrf_token": token}, data=form).status_code == 401, path
            assert anonymous.post(path, data=form).status_code == 403, path
            assert anonymous.post(path, data={**form, "csrf_token": token}).status_code == 403, path  # not in the body
        cookie = "; ".join(f"{k}={v}" for k, v in anonymous.cookies.items())
    with signed_in_browser(console, "eve") as (browser, _):
        for path in ("/usage/keys", f"/usage/keys/{fixture_key['id']}/revoke"):
            assert browser.post(path, data=form).status_code == 403, path  # signed in, no token
            assert browser.post(path, params={"csrf_token": token}, data=form).status_code == 403, path  # another's
        signed_in_cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    # Refused before the body is read: a declared 50 MB body, none of it sent, still answered.
    assert raw_post(console, "/usage/keys", {"Cookie": signed_in_cookie})[0].startswith("HTTP/1.1 403")
    assert raw_post(console, f"/usage/keys?csrf_token={token}", {"Cookie": cookie})[0].startswith("HTTP/1.1 401")
    assert key_ids() == before and audit.read_text() == records  # nothing created, nothing recorded


@pytest.mark.parametrize("fields, named", [
    ({"quota": "-5"}, "--quota '-5'"),
    ({"quota": "lots"}, "--quota 'lots'"),
    ({"rate": "fast"}, "--rate 'fast'"),
    ({"expires": "tomorrow"}, "--expires 'tomorrow'"),
    ({"tenant": "a b"}, "tenant 'a b'"),
    ({"products": ["text_embed", "no_such_product"]}, "'no_such_product' is not a product of this console"),
    ({"products": "../etc"}, "'../etc' is not a product name"),
    ({"products": []}, "name at least one product"),
])
def test_a_bad_option_is_a_400_naming_it_and_creates_nothing(metered, fields, named):
    console, _, _, audit = metered
    before, records = key_ids(), audit.read_text()
    with signed_in_browser(console) as (browser, token):
        answer = browser.post("/usage/keys", params={"csrf_token": token},
                              data={"tenant": "initech", "products": "text_embed", **fields})
    assert answer.status_code == 400
    assert named in html.unescape(answer.text), answer.text
    assert 'id="new-key"' not in answer.text
    assert key_ids() == before and audit.read_text() == records
