"""The console in a real browser: Debian's chromium driven by Playwright's pip wheel (never
`playwright install`), against a real console in front of a real tritonserver.

Every page loads without a script or CSP error, one playground request per kind renders
what the client itself answers, and a signed-in admin rolls a product back (on a server
of its own, over a copy of the repository with a second version exported) and finds it in
the audit log beside the CLI's own entry. Screenshots go to the test's tmp folder; with
MMSERVE_CONSOLE_SCREENSHOTS=DIR they are also written to DIR/console-*.png (the README's:
`MMSERVE_CONSOLE_SCREENSHOTS=docs/img pytest tests/test_console_browser.py`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the console needs the `console` extra (pip install -e '.[console]')")
playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the `dev` extra (playwright)")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install chromium`, or `make setup`)"
)

from mmserve.console import ConsoleSettings  # noqa: E402
from mmserve.console.playground import wav_bytes  # noqa: E402
from mmserve.console.server import ConsoleServer, free_port  # noqa: E402
from mmserve.lifecycle import Lifecycle  # noqa: E402

ADMIN_KEY = "browser-test-admin-key-9876543210"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
    # A microphone that plays a beep, allowed without a prompt: the recorder can be tested.
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
SCREENSHOTS = os.environ.get("MMSERVE_CONSOLE_SCREENSHOTS")
BUSY_INTERVALS = 12 if SCREENSHOTS else 5  # the README's Live chart shows a dozen; the checks need a few
VIEWPORT = {"width": 1280, "height": 860}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def console(server, repository: Path, tmp_path_factory) -> Iterator[ConsoleServer]:
    """The console in front of the session's server (read-only use: pages and playground)."""
    settings = ConsoleSettings(
        server=server.grpc_url, repository=repository, port=free_port(), metrics_url=server.metrics_url,
        admin_key=ADMIN_KEY, audit_log=tmp_path_factory.mktemp("console-browser") / "audit.jsonl",
        sample_interval_s=1.0,
    )
    with ConsoleServer(settings) as running:
        yield running


class Page:
    """A browser tab that fails the test on any script error or CSP violation it saw."""

    def __init__(self, browser, base: str, out: Path) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, permissions=["microphone"])
        self.tab = self.context.new_page()
        self.base = base.rstrip("/")
        self.out = out
        self.errors: list[str] = []
        self.tab.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(str(e)))

    def sign_in(self, key: str = ADMIN_KEY) -> "Page":
        """Signed in through the form's own POST (the tab shares the context's cookies)."""
        form = self.context.request.get(f"{self.base}/signin")
        token = re.search(r'<meta name="csrf-token" content="([^"]+)"', form.text()).group(1)
        answer = self.context.request.post(f"{self.base}/signin?csrf_token={token}", form={"admin_key": key, "name": "ci"},
                                           max_redirects=0)
        assert answer.status == 303, answer.text()
        return self

    def open(self, path: str) -> object:
        response = self.tab.goto(self.base + path)
        assert response is not None and response.status == 200, (path, response and response.status)
        return self.tab

    def shot(self, name: str, readme: str | None = None, height: int | None = None) -> None:
        """The whole page into the test's folder; for the README (``readme``), at most
        ``height`` pixels of it."""
        self.tab.screenshot(path=str(self.out / f"{name}.png"), full_page=True)
        if SCREENSHOTS and readme:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height} if height else None
            self.tab.screenshot(path=str(Path(SCREENSHOTS) / f"{readme}.png"), full_page=True, clip=clip)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"browser errors: {self.errors}"


@pytest.fixture
def page(browser, console: ConsoleServer, tmp_path: Path) -> Iterator[Page]:
    tab = Page(browser, console.url, tmp_path).sign_in()
    yield tab
    tab.close()


def tone_file(folder: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    path = folder / "tone.wav"
    path.write_bytes(wav_bytes(0.3 * np.sin(2 * np.pi * 440 * t), rate))
    return path


def image_file(folder: Path, name: str, colour: tuple[int, int, int]) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse([10, 10, 54, 54], fill=colour)
    path = folder / name
    image.save(path)
    return path


def send(tab, wait_for: str = "#result .result, #result .alert") -> None:
    tab.click("#playground-form button[type=submit]")
    tab.wait_for_selector(wait_for, timeout=60_000)


# --- every page -----------------------------------------------------------------------------


def test_every_page_loads_without_errors(page: Page, repository: Path):
    products = [p.name for p in Lifecycle(repository).products()]
    tab = page.open("/products")
    cards = tab.locator("article.product")
    assert cards.count() == len(products)
    assert set(tab.locator("article.product h2").all_inner_texts()) == set(products)
    page.shot("products", "console-products", height=1180)
    for path in ["/playground", "/audit", "/signin", "/live", "/products/sentiment", "/playground/sentiment"]:
        page.open(path)
        assert page.tab.locator("header.top nav a.active").count() == (0 if path == "/signin" else 1)


def test_an_anonymous_visitor_sees_the_landing_page_only(browser, console: ConsoleServer, tmp_path: Path):
    anonymous = Page(browser, console.url, tmp_path)
    try:
        tab = anonymous.open("/")
        assert tab.locator("header.top nav a").count() == 0 and tab.locator("footer").count() == 0
        for path in ("/products", "/playground/sentiment", "/audit", "/live"):
            anonymous.open(path)
            assert urlsplit(tab.url).path == "/signin", path
            assert tab.locator("form.stack input[name=admin_key]").count() == 1
        tab.fill("input[name=admin_key]", ADMIN_KEY)  # signing in goes where the visitor was headed
        tab.click("form.stack button[type=submit]")
        tab.wait_for_url(re.compile(r"/live$"))
        assert {"Products", "Live", "Playground", "Audit"} <= set(tab.locator("header.top nav a").all_inner_texts())
    finally:
        anonymous.close()


# --- playground: one request per kind, compared with the client's own answer ------------------


def test_text_classification_shows_the_label(page: Page, client):
    tab = page.open("/playground/sentiment")
    texts = ["where is my parcel?", "this is the best purchase I ever made"]
    tab.fill("textarea[name=text]", "\n".join(texts))
    send(tab)
    expected = [c.label for c in client.classify_text(texts, pipeline="sentiment")]
    assert tab.locator(".top-label").all_inner_texts() == expected
    assert tab.locator("tr.best").count() == len(texts)
    page.shot("playground-sentiment")


def test_entities_are_highlighted(page: Page, client):
    candidates = ["Angela Merkel met Emmanuel Macron in Paris.", "Ada Lovelace was born in London.",
                  "The United Nations met in Geneva on Monday."]
    text = next((t for t in candidates if client.extract_entities(t, pipeline="text_ner")), None)
    if text is None:
        pytest.skip("the tiny NER model found no entity in any candidate sentence")
    expected = sorted(client.extract_entities(text, pipeline="text_ner"), key=lambda e: e.start)
    tab = page.open("/playground/text_ner")
    tab.fill("textarea[name=text]", text)
    send(tab)
    marks = tab.locator("mark.ent")
    assert marks.count() == len(expected)
    for i, entity in enumerate(expected):
        assert marks.nth(i).get_attribute("data-label") == entity.label
        assert marks.nth(i).inner_text().startswith(entity.text)
    assert tab.locator(".highlighted").inner_text().replace("\n", "").count(expected[0].text) >= 1
    page.shot("playground-ner")


def test_embeddings_show_a_similarity_matrix(page: Page):
    texts = ["I forgot my password", "how do I reset my password?", "where is my parcel?", "the weather is lovely today"]
    tab = page.open("/playground/text_embed")
    tab.fill("textarea[name=text]", "\n".join(texts))
    send(tab)
    cells = tab.locator("table.matrix td.sim")
    assert cells.count() == len(texts) ** 2
    assert [cells.nth(i * (len(texts) + 1)).inner_text() for i in range(len(texts))] == ["1.00"] * len(texts)
    assert -1.0 <= float(cells.nth(1).inner_text()) <= 1.0
    assert cells.nth(1).inner_text() == cells.nth(len(texts)).inner_text()  # symmetric
    page.shot("playground-embeddings", "console-playground", height=860)


def test_zero_shot_shows_bars_for_the_candidate_labels(page: Page, client, tmp_path: Path):
    image = image_file(tmp_path, "circle.png", (220, 30, 30))
    labels = ["a red circle", "a blue square", "a green triangle"]
    tab = page.open("/playground/zero_shot_image")
    tab.set_input_files("input[name=files]", str(image))
    tab.fill("input[name=labels]", ", ".join(labels))
    send(tab)
    assert tab.locator("table.bars svg.bar").count() == len(labels)
    expected = client.zero_shot(image, labels)
    assert tab.locator(".top-label").inner_text() == expected.label
    assert tab.locator("img.thumb").count() == 1
    page.shot("playground-zero-shot")


def test_image_text_similarity(page: Page, tmp_path: Path):
    images = [image_file(tmp_path, "red.png", (220, 30, 30)), image_file(tmp_path, "blue.png", (20, 20, 200))]
    tab = page.open("/playground/image_embed")
    tab.set_input_files("input[name=files]", [str(p) for p in images])
    tab.fill("textarea[name=text]", "a red circle\na blue circle\na green square")
    assert tab.locator("select[name=partner]").input_value() == "clip_text_embed"
    send(tab)
    assert tab.locator("table.matrix td.sim").count() == 6
    assert tab.locator("table.matrix tbody th img.thumb").count() == 2


def test_audio_upload_shows_the_keyword(page: Page, client, tmp_path: Path):
    clip = tone_file(tmp_path)
    tab = page.open("/playground/audio_classify")
    tab.set_input_files("input[name=files]", str(clip))
    send(tab)
    assert tab.locator(".top-label").inner_text() == client.classify_audio(clip, pipeline="audio_classify").label


def test_microphone_recording_is_sent_as_wav(page: Page, repository: Path):
    labels = Lifecycle(repository).product("audio_classify").labels
    tab = page.open("/playground/audio_classify")
    tab.click("#record")
    tab.wait_for_selector("#record-status:text-matches('press Send|No microphone|cannot record|Could not')", timeout=30_000)
    assert "press Send" in tab.inner_text("#record-status")
    send(tab)
    assert tab.locator(".source").inner_text() == "microphone.wav"
    assert tab.locator(".top-label").inner_text() in labels


def test_bad_input_shows_the_servers_message(page: Page):
    tab = page.open("/playground/text_classify")
    tab.fill("textarea[name=text]", "   ")
    send(tab)
    alert = tab.locator("#result .alert.error")
    assert "TEXT[0] is empty or only whitespace" in alert.inner_text()
    page.errors = [e for e in page.errors if "400" not in e]  # the browser logs the 400 itself


# --- live -----------------------------------------------------------------------------------


def busy_intervals(page: Page, product: str) -> int:
    """How many sampled intervals saw the product answer requests (the console's own JSON,
    read with the signed-in tab's cookies)."""
    data = page.context.request.get(f"{page.base}/api/live?product={product}").json()
    return sum(1 for rate in data["models"][product]["requests_per_s"] if rate)


def test_live_charts_draw_and_refresh(page: Page, server, console: ConsoleServer):
    from mmserve.client import Client, MmserveError

    stop = threading.Event()

    def traffic() -> None:
        with Client(server.grpc_url, timeout=30.0) as c:
            sent = 0
            while not stop.is_set():
                c.classify_text(["where is my parcel?"] * (1 + sent % 4), pipeline="sentiment")
                sent += 1
                if sent % 20 == 0:
                    try:
                        c.classify_text(" ", pipeline="sentiment")  # shows on the failures line
                    except MmserveError:
                        pass
                stop.wait(0.02)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        tab = page.open("/live?product=sentiment")
        tab.wait_for_selector("#charts[data-samples]", timeout=30_000)
        for _ in range(120):  # until enough sampled intervals saw our traffic
            if busy_intervals(page, "sentiment") >= BUSY_INTERVALS:
                break
            tab.wait_for_timeout(1000)
        tab.wait_for_timeout(1500)  # one more refresh of the charts
        assert tab.locator("#charts .uplot").count() == 5
        assert tab.locator("#charts .uplot canvas").count() == 5
        legend = tab.locator("[data-chart=queue] .u-legend").inner_text()
        assert "sentiment_encoder" in legend and "text_tokenize" in legend
        requests = tab.locator("#overview tr.chosen td.num").nth(2)  # requests in 5 min: htmx refreshes it
        for _ in range(30):
            if requests.inner_text().isdigit() and int(requests.inner_text()) >= 12:
                break
            tab.wait_for_timeout(1000)
        assert int(requests.inner_text()) >= 12
        page.shot("live", "console-live", height=1130)
    finally:
        stop.set()
        sender.join(timeout=30)
    assert busy_intervals(page, "sentiment") >= BUSY_INTERVALS


# --- admin: sign in, roll back, audit ---------------------------------------------------------


@pytest.fixture(scope="module")
def versioned(repository: Path, text_checkpoints: dict, tmp_path_factory) -> Path:
    """A copy of the repository where sentiment has a second version (INT8), served as v2."""
    from mmserve.exporters.text import export_text

    copy = tmp_path_factory.mktemp("console-rollback") / "repository"
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns(".mmserve*"))
    export_text(text_checkpoints["sentiment"], copy, name="sentiment", int8=True)
    return copy


@pytest.fixture(scope="module")
def admin_console(versioned: Path, tmp_path_factory) -> Iterator[tuple[ConsoleServer, object]]:
    from mmserve.server import ServerPorts, TritonServer

    log = tmp_path_factory.mktemp("console-rollback-log") / "triton.log"
    with TritonServer(versioned, ServerPorts.free(), models=["sentiment"], log_file=log) as own:
        settings = ConsoleSettings(server=own.grpc_url, repository=versioned, port=free_port(),
                                   metrics_url=own.metrics_url, admin_key=ADMIN_KEY, sample_interval_s=1.0)
        with ConsoleServer(settings) as running:
            yield running, own


def test_sign_in_roll_back_export_and_see_it_all(browser, admin_console, versioned: Path, text_checkpoints: dict,
                                                tmp_path: Path):
    """The words follow the direction (roll back from v2 to v1, then roll forward to v2 is
    what v2 offers), only what can succeed is offered, an export without a reload shows on
    the card as "v1 serving, v3 on disk" with the command that reconciles them, and the
    audit log has the console's and the CLI's entries."""
    from mmserve.client import Client
    from mmserve.exporters.text import export_text

    console, own = admin_console
    assert Lifecycle(versioned).product("sentiment").active_version == 2
    page = Page(browser, console.url, tmp_path)
    stop = threading.Event()

    def traffic() -> None:  # steady requests, so the Live page sees the version that answers change
        with Client(own.grpc_url, timeout=60.0) as c:
            while not stop.is_set():
                c.classify_text("where is my parcel?", pipeline="sentiment")
                stop.wait(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        tab = page.open("/products/sentiment")  # not signed in: the sign-in page, which comes back here
        assert urlsplit(tab.url).path == "/signin" and tab.locator("button[data-action]").count() == 0
        tab.fill("input[name=name]", "tester")
        tab.fill("input[name=admin_key]", ADMIN_KEY)
        tab.click("form.stack button[type=submit]")
        tab.wait_for_url(re.compile(r"/products/sentiment$"))
        assert tab.locator(".signed-in").inner_text() == "console:tester"
        offered = set(tab.locator("button[data-action]").evaluate_all("bs => bs.map(b => b.dataset.action)"))
        assert offered == {"unload", "rollback-to-1"}, offered  # READY at v2: no load, no reload, nothing to v2
        assert tab.locator("button[data-action=rollback-to-1]").inner_text() == "Roll back to v1…"

        tab.click("button[data-action=rollback-to-1]")
        confirm = tab.wait_for_selector("#action-panel .confirm")
        assert "Roll sentiment back from v2 to v1?" in confirm.inner_text() and "an earlier version" in confirm.inner_text()
        tab.click("button[data-confirm=rollback]")
        done = tab.wait_for_selector("#action-panel .alert.ok", timeout=180_000)
        assert "Roll back sentiment: ok" in done.inner_text()
        page.shot("rolled-back")

        tab = page.open("/live?product=sentiment")  # the switch, marked: v2 answered, then v1
        note = tab.locator("#version-changes span")
        minute = tab.locator("#overview tr[data-product=sentiment] td.versions")

        def switch_seen() -> bool:  # the chart's note and the overview refresh on their own timers
            shown = note.inner_text() if tab.locator("#version-changes:not([hidden])").count() else ""
            return bool(re.search(r"v2 → (v1\+2 → )?v1$", shown)) and "v1" in minute.inner_text()

        for _ in range(60):
            if switch_seen():
                break
            tab.wait_for_timeout(1000)
        assert re.search(r"v2 → (v1\+2 → )?v1$", note.inner_text()), note.inner_text()
        assert "v1" in minute.inner_text(), minute.inner_text()
        tab = page.open("/products/sentiment")
        assert tab.locator("button[data-action=roll-forward-to-2]").inner_text() == "Roll forward to v2…"

        with Client(own.grpc_url, timeout=60) as c:  # the server serves v1 now, and answers
            product = Lifecycle(versioned, c).product("sentiment")
            assert (product.served_version, product.active_version, product.state) == (1, 1, "READY")
            assert c.classify_text("where is my parcel?", pipeline="sentiment").label in product.labels

        export_text(text_checkpoints["sentiment"], versioned, name="sentiment")  # v3, no reload
        tab = page.open("/products")
        card = tab.locator("#product-sentiment")
        assert "v1 serving · v3 on disk" in " ".join(card.locator("dd").first.inner_text().split())
        assert "v3 exported, v1 serving — run mmserve reload sentiment" in card.locator(".drift").inner_text()
        assert card.locator(".drift code").inner_text() == "mmserve reload sentiment"
        tab = page.open("/products/sentiment")
        assert tab.locator("button[data-action=reload]").inner_text() == "Reload — serve v3"
        page.shot("drift")

        # The CLI reconciles them, and writes to the same log.
        cli = subprocess.run(
            [sys.executable, "-m", "mmserve.cli", "reload", "sentiment", "--server", own.grpc_url,
             "--repository", str(versioned)],
            capture_output=True, text=True, timeout=300,
            env={k: v for k, v in os.environ.items() if k not in ("MMSERVE_AUDIT_LOG", "MMSERVE_ADMIN_KEY")},
        )
        assert cli.returncode == 0, cli.stderr
        tab = page.open("/products")
        assert "v3 serving" in " ".join(tab.locator("#product-sentiment dd").first.inner_text().split())
        assert tab.locator("#product-sentiment .drift").count() == 0

        tab = page.open("/audit")
        rows = tab.locator("table.audit tbody tr")
        newest = [rows.nth(i).inner_text() for i in range(3)]
        assert "reload" in newest[0] and "console:" not in newest[0]  # the CLI: user@host
        assert "export" in newest[1] and "version 3" in newest[1]
        assert "console:tester" in newest[2] and "rollback" in newest[2] and "ok" in newest[2]
        page.shot("audit", "console-audit", height=420)
    finally:
        stop.set()
        sender.join(timeout=60)
        page.close()
