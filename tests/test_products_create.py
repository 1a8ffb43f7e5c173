"""Products from examples against a real server: create -> report -> publish -> serve -> rollback,
in head mode (a classifier over the served text_embed / audio_embed, no second encoder) and in
finetune mode (a queued job training the suite's tiny BERT one epoch).

Its own TritonServer over a repository holding only the session's fused text_embed and
audio_embed (copied), so publishing here never disturbs the other tests' products.
"""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from subsets import subset_csv

from mmserve.client import Client
from mmserve.kinds import info
from mmserve.lifecycle import Lifecycle
from mmserve.products import jobs
from mmserve.products.create import CreateError, create, publish
from mmserve.products.data import DataProblem, prepare
from mmserve.products.runs import CANCELLED, PUBLISHED, QUEUED, REPORTED, RUNNING, CreateRequest, new_run
from mmserve.server import ServerPorts, TritonServer

TEXT = info("text_classify")
AUDIO = info("audio_classify")
ENCODERS = ["text_embed", "audio_embed"]
PRODUCT = "tickets"


def _intents(path: Path, labels: int, per_label: int, offset: int = 0) -> Path:
    from mmserve.training.defaults import embedded_data

    return subset_csv(embedded_data("intents"), path, labels, per_label, offset)


@pytest.fixture(scope="module")
def repo(fused_repository: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("products-create") / "repository"
    for model in ENCODERS:
        shutil.copytree(fused_repository / model, target / model)
    return target


@pytest.fixture(scope="module")
def pc_server(repo: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("products-create-log") / "triton.log"
    with TritonServer(repo, ServerPorts.free(), models=ENCODERS, log_file=log) as running:
        yield running


@pytest.fixture(scope="module")
def pc_client(pc_server):
    with Client(pc_server.grpc_url, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    return _intents(tmp_path_factory.mktemp("texts") / "tickets.csv", labels=4, per_label=10)


@pytest.fixture(scope="module")
def keyword_zip(workdir: Path, repository: Path, tmp_path_factory) -> Path:
    """The session's synthesised keywords (speech line) as a zip of a folder per label."""
    from lines_speech import speech_paths

    train = speech_paths(workdir).data / "train"
    archive = tmp_path_factory.mktemp("clips") / "keywords.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for clip in sorted(train.rglob("*.wav")):
            zipped.write(clip, f"keywords/{clip.parent.name}/{clip.name}")
    return archive


def _request(repo: Path, data: Path, mode: str = "head", kind: str = "text_classify", **extra) -> CreateRequest:
    return CreateRequest(name=extra.pop("name", PRODUCT), kind=kind, data=str(data), mode=mode, repository=str(repo), **extra)


def _stubs(server) -> dict[int, str]:
    """The server's Python stubs: pid -> the model.py they run."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != server.pid:
                continue
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if command and command[0].endswith(b"triton_python_backend_stub") and len(command) > 1:
            found[int(entry.name)] = command[1].decode()
    return found


def _maps(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- data checks (no server) -----------------------------------------------------------------


def test_bad_examples_are_refused_with_every_problem_named(tmp_path: Path):
    data = tmp_path / "bad.csv"
    data.write_text(
        "text,label\nwhere is my parcel,track\nwhere is  my PARCEL,track\ncancel it,cancel\ncancel it,refund\n"
        "hello,greet\n,greet\nplease cancel,cancel\nmy refund,refund\nrefund now,refund\n", encoding="utf-8")
    with pytest.raises(DataProblem) as caught:
        prepare(TEXT, data, tmp_path / "run")
    message = str(caught.value)
    assert "duplicate of bad.csv:2" in message  # case and spacing do not make a new example
    assert "labelled 'refund' there 'cancel'" in message  # one text under two labels
    assert "empty text" in message
    with pytest.raises(DataProblem, match=r"label 'y' has 1 example\(s\); it needs at least 3"):
        data.write_text("text,label\na,x\nb,x\nc,x\nd,y\n", encoding="utf-8")
        prepare(TEXT, data, tmp_path / "run")


def test_split_is_stratified_and_a_heldout_file_must_be_new(tmp_path: Path, texts: Path):
    examples = prepare(TEXT, texts, tmp_path / "run")
    assert {label: n for label, (_, n) in examples.counts().items()} == {label: 2 for label in examples.labels}
    assert not {e.key for e in examples.train} & {e.key for e in examples.heldout}
    leak = tmp_path / "heldout.csv"
    shutil.copy(texts, leak)
    with pytest.raises(DataProblem, match="also a training example"):
        prepare(TEXT, texts, tmp_path / "run2", heldout=leak)


def test_unreadable_clips_are_named(tmp_path: Path):
    for label in ("yes", "no"):
        (tmp_path / "clips" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "clips" / label / f"{i}.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(DataProblem, match=r"0\.wav: unreadable"):
        prepare(AUDIO, tmp_path / "clips", tmp_path / "run")


def test_head_mode_needs_the_encoder_product(tmp_path: Path, texts: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="needs the embedding product text_embed"):
        create(_request(tmp_path / "empty", texts))
    with pytest.raises(CreateError, match="text_classify, audio_classify"):
        create(_request(tmp_path, texts, kind="text_embed"))


# --- head mode, end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_v1(repo: Path, texts: Path, pc_client: Client):
    run = create(_request(repo, texts, actor="tester"), pc_client)
    entry = publish(run, Lifecycle(repo, pc_client, actor="tester@products"))
    return run, entry


def test_a_head_product_is_reported_then_published_and_served(head_v1, repo: Path, pc_client: Client, triton_of):
    run, entry = head_v1
    report = json.loads(run.path("report.json").read_text())
    assert report["mode"] == "head" and report["scores"]["n"] == 8 and report["current"] is None
    assert set(report["scores"]["labels"]) == set(report["scores"]["labels"]) and len(report["scores"]["per_label"]) == 4
    assert run.path("confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.status().state == PUBLISHED and run.status().published_version == 1
    assert "version 1" in entry.detail
    labels = report["scores"]["labels"]
    answers = pc_client.classify_text(["where is my parcel?", "I want my money back"], pipeline=PRODUCT)
    assert all(a.label in labels and a.probs.shape == (4,) and abs(float(a.probs.sum()) - 1) < 1e-4 for a in answers)
    # The contract as any Triton client sees it: text_classify's tensors and labels.txt.
    import tritonclient.grpc as grpcclient

    text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"cancel my order"]], dtype=object))
    result = triton_of.infer(PRODUCT, [text], outputs=[grpcclient.InferRequestedOutput("PROBS", class_count=2)])
    assert result.as_numpy("PROBS").shape == (1, 2) and b":" in result.as_numpy("PROBS")[0, 0]
    card = json.loads((repo / PRODUCT / "1" / "card.json").read_text())
    assert card["kind"] == "text_classify" and card["layout"] == "head" and card["metrics"]["dev_accuracy"] == report["scores"]["accuracy"]
    audit = [json.loads(line) for line in (repo / ".mmserve-audit.jsonl").read_text().splitlines()]
    assert any(a["action"] == "publish" and a["product"] == PRODUCT and a["result"] == "ok" for a in audit)


@pytest.fixture(scope="module")
def triton_of(pc_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(pc_server.grpc_url)
    yield client
    client.close()


def test_a_head_loads_no_second_encoder(head_v1, pc_server, pc_client: Client):
    stubs = _stubs(pc_server)
    heads = [pid for pid, model in stubs.items() if f"/{PRODUCT}/" in model]
    encoders = [pid for pid, model in stubs.items() if "/text_embed/" in model]
    assert heads and encoders, stubs
    for pid in heads:  # the head's process runs numpy only: no onnxruntime session, no tokenizer
        assert not _maps(pid, "onnxruntime") and not _maps(pid, "tokenizers"), f"head stub {pid} loaded an encoder"
    assert all(_maps(pid, "onnxruntime") for pid in encoders)
    print(f"\nRSS: head stub {sum(_rss_mb(p) for p in heads):.0f} MB, text_embed stub "
          f"{sum(_rss_mb(p) for p in encoders):.0f} MB")
    assert sum(_rss_mb(p) for p in heads) < sum(_rss_mb(p) for p in encoders)


def test_a_new_version_switches_live_and_rolls_back(head_v1, repo: Path, pc_server, pc_client: Client, tmp_path: Path):
    more = _intents(tmp_path / "more.csv", labels=4, per_label=10, offset=10)
    run = create(_request(repo, more, head="centroid"), pc_client)
    report = json.loads(run.path("report.json").read_text())
    assert report["current"]["version"] == 1 and report["current"]["measured"] == "through the server"
    failures: list[Exception] = []
    stop = threading.Event()

    def traffic() -> None:
        with Client(pc_server.grpc_url, timeout=60.0) as own:
            while not stop.is_set():
                try:
                    own.classify_text("where is my parcel?", pipeline=PRODUCT)
                except Exception as error:  # noqa: BLE001 - counted
                    failures.append(error)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        lifecycle = Lifecycle(repo, pc_client, actor="tester@products")
        publish(run, lifecycle)
        assert lifecycle.product(PRODUCT).active_version == 2
        lifecycle.rollback(PRODUCT)
        assert lifecycle.product(PRODUCT).active_version == 1
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    assert pc_client.classify_text("hello there", pipeline=PRODUCT).label


def test_an_audio_head_from_a_zip_of_clips(repo: Path, keyword_zip: Path, pc_client: Client):
    from mmserve.products.head import read_clip

    run = create(_request(repo, keyword_zip, kind="audio_classify", name="spoken"), pc_client)
    assert run.status().state == REPORTED
    publish(run, Lifecycle(repo, pc_client, actor="tester@products"))
    train = [line.split(",") for line in run.path("heldout.csv").read_text().splitlines()[1:3]]
    samples, rate = read_clip(Path(train[0][0]))
    answer = pc_client.classify_audio(samples, sample_rate=rate, pipeline="spoken")
    labels = json.loads(run.path("report.json").read_text())["scores"]["labels"]
    assert answer.label in labels and answer.probs.shape == (len(labels),)


# --- finetune mode: a queued job ------------------------------------------------------------------


def test_a_finetune_job_is_trained_reported_published_and_rolled_back(
    head_v1, repo: Path, texts: Path, tiny_bert: Path, pc_client: Client,
):
    run = create(_request(repo, texts, mode="finetune", base=str(tiny_bert), epochs=1))
    assert run.status().state == QUEUED and run in jobs.queued()
    seen: list[str] = []
    jobs.wait_for(run, lambda r: seen.append(r.status().stage), poll_s=0.2)
    status = run.status()
    assert status.state == REPORTED, (status.error, (run.path("train.log").read_text()[-2000:]))
    assert status.epoch == 1 and status.train_loss is not None and status.dev_metric == "dev_accuracy"
    assert any(stage.startswith("training epoch 1 of 1") for stage in seen)
    assert run.path("train.log").read_text().count("epoch 1") >= 1
    report = json.loads(run.path("report.json").read_text())
    assert report["mode"] == "finetune" and report["current"]["version"] in (1, 2)
    lifecycle = Lifecycle(repo, pc_client, actor="tester@products")
    before = lifecycle.product(PRODUCT).active_version
    publish(run, lifecycle)  # a fine-tuned version of the head product: its own encoder this time
    after = lifecycle.product(PRODUCT).active_version
    assert after == 3 and json.loads((repo / PRODUCT / "3" / "card.json").read_text())["layout"] == "fused"
    assert pc_client.classify_text("where is my parcel?", pipeline=PRODUCT).label in report["scores"]["labels"]
    lifecycle.rollback(PRODUCT, to=before)
    assert lifecycle.product(PRODUCT).active_version == before
    assert pc_client.classify_text("where is my parcel?", pipeline=PRODUCT).label
    with pytest.raises(CreateError, match="already published"):
        publish(run, lifecycle)


def test_jobs_are_cancelled_and_resumed_after_a_crash(repo: Path, texts: Path):
    queued_run = create(_request(repo, texts, mode="finetune", name="later"))
    assert "had not started" in jobs.cancel(queued_run) and queued_run.status().state == CANCELLED
    crashed = new_run(_request(repo, texts, mode="finetune", name="crashed"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed.set_status(state=RUNNING, pid=dead.pid, epoch=2)
    assert crashed in jobs.recover() and crashed.status().state == QUEUED
    assert "resuming after epoch 2" in crashed.status().stage
    assert "--resume" in jobs.training_command(crashed)
    jobs.cancel(crashed)
    listed = subprocess.run([sys.executable, "-m", "mmserve.cli", "jobs", "--json", "--all"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    assert {"later", "crashed"} <= {j["request"]["name"] for j in json.loads(listed.stdout)}


def test_the_cli_creates_lists_and_refuses_bad_data(head_v1, repo: Path, texts: Path, tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "mmserve.cli"]
    listed = subprocess.run([*cli, "products", "--offline", "--json", "--repository", str(repo)],
                            capture_output=True, text=True, env=env, check=True)
    assert PRODUCT in {p["name"] for p in json.loads(listed.stdout)}
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhi,a\nhi,b\n", encoding="utf-8")
    refused = subprocess.run([*cli, "products", "create", "x", "--kind", "text_classify", "--data", str(bad),
                              "--mode", "head", "--repository", str(repo), "--offline"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "labelled 'b' there 'a'" in refused.stderr
    made = subprocess.run([*cli, "products", "create", "cli_head", "--kind", "text_classify", "--data", str(texts),
                           "--mode", "head", "--repository", str(repo), "--offline"], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    assert "held-out accuracy" in made.stdout and "nothing is served yet" in made.stdout


# --- the console's New product page, in Chromium ------------------------------------------------

ADMIN_KEY = "products-create-admin-key-0123456789"
SCREENSHOTS = os.environ.get("MMSERVE_CONSOLE_SCREENSHOTS")


@pytest.fixture(scope="module")
def web(repo: Path, pc_server, tmp_path_factory):
    """Chromium on the console in front of this module's server, signed in as an admin."""
    pytest.importorskip("fastapi", reason="the console needs the `console` extra")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the `dev` extra")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`, or `make setup`)")
    from mmserve.console import ConsoleSettings
    from mmserve.console.server import ConsoleServer, free_port

    settings = ConsoleSettings(server=pc_server.grpc_url, repository=repo, port=free_port(),
                               metrics_url=pc_server.metrics_url, admin_key=ADMIN_KEY, sample_interval_s=1.0)
    with ConsoleServer(settings) as console, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(f"{console.url.rstrip('/')}/signin?next=/new")
        tab.fill("input[name=name]", "tester")
        tab.fill("input[name=admin_key]", ADMIN_KEY)
        tab.click("form.stack button[type=submit]")
        tab.wait_for_url(re.compile(r"/new$"))
        yield tab, console.url.rstrip("/"), errors
        browser.close()


def _shot(tab, name: str, out: Path) -> None:
    tab.screenshot(path=str(out / f"{name}.png"), full_page=True)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def _new(tab, url: str, name: str, data: Path, mode: str = "head", **settings: str) -> None:
    tab.goto(f"{url}/new")
    tab.fill("input[name=name]", name)
    tab.select_option("select[name=kind]", "text_classify")
    tab.set_input_files("input[name=data]", str(data))
    tab.check(f"input[name=mode][value={mode}]")
    if settings:
        tab.click("details summary")  # the fine-tune settings fold out
    for field, value in settings.items():
        tab.fill(f"input[name={field}]", value)
    tab.click("#create", no_wait_after=True)  # a head is trained before the answer: seconds, more on a busy machine
    tab.wait_for_url(re.compile(r"/new/runs/"), timeout=180_000)


def playwright_error() -> type:
    from playwright.sync_api import Error

    return Error


def _wait_for_text(tab, selector: str, pattern: re.Pattern, seconds: float) -> str:
    """Poll an element's text (the console's CSP forbids the eval wait_for_function needs)."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            element = tab.query_selector(selector)
            text = element.inner_text() if element else ""
        except playwright_error():  # swapped out by the page's refresh between the two calls
            text = ""
        if pattern.search(text) or time.monotonic() > deadline:
            assert pattern.search(text), f"{selector} still says {text!r} after {seconds} s"
            return text
        tab.wait_for_timeout(250)


def _publish(tab) -> None:
    tab.click("#publish-button")
    tab.click("#confirm-publish", no_wait_after=True)  # asks first
    message = tab.wait_for_selector("#run-message, #run-page .alert.error", timeout=600_000)
    assert message.get_attribute("id") == "run-message", message.inner_text()
    assert "published" in message.inner_text(), message.inner_text()


def test_the_console_makes_publishes_tries_and_rolls_back_a_product(
    web, repo: Path, texts: Path, tiny_bert: Path, pc_server, tmp_path: Path,
):
    tab, base, errors = web
    _new(tab, base, "web_tickets", texts)  # a head: reported while the page waits
    tab.wait_for_selector("#report")
    assert "%" in tab.inner_text("#accuracy")
    _shot(tab, "products-new-report", tmp_path)
    _publish(tab)
    tab.click("#try-it")
    tab.wait_for_url(re.compile(r"/playground/web_tickets$"))
    tab.fill("textarea[name=text]", "where is my parcel?\nI want a refund")
    tab.click("#playground-form button[type=submit]")
    tab.wait_for_selector("#result .result", timeout=60_000)
    _shot(tab, "products-new-playground", tmp_path)

    _new(tab, base, "web_tickets", texts, mode="finetune", base=str(tiny_bert), epochs="1")
    tab.wait_for_selector("#run-state")  # the page follows the job by itself, every second
    _wait_for_text(tab, "#run-stage", re.compile(r"training epoch|exporting|reported"), 300)
    _shot(tab, "products-new-job", tmp_path)
    tab.wait_for_selector("#report", timeout=300_000)
    assert tab.locator("#history tbody tr").count() == 1  # epoch 1: its loss and dev accuracy
    assert "Current version v1" in tab.inner_text("#current")
    _publish(tab)
    assert Lifecycle(repo).product("web_tickets").active_version == 2

    tab.goto(f"{base}/products/web_tickets")
    tab.click("button[data-action=rollback-to-1]")
    tab.click("button[data-confirm=rollback]")
    tab.wait_for_selector("#action-panel .alert.ok", timeout=180_000)
    with Client(pc_server.grpc_url, timeout=60) as client:
        product = Lifecycle(repo, client).product("web_tickets")
        assert (product.active_version, product.state) == (1, "READY")
        assert client.classify_text("where is my parcel?", pipeline="web_tickets").label in product.labels
    assert not errors, errors
