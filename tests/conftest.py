"""One real `tritonserver`, started once per test session, over a repository of tiny
models that the tests train and export with the real code paths.

Tiny random BERTs (2 layers, 32 wide) keep CI fast; the real-size run is the demo.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from subsets import subset_csv

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# `make test-fast` (a developer's loop, <= 2 min) runs what is not marked `integration`:
# tests that use a session server or trained checkpoints are marked by their fixtures,
# and the modules below start servers, trainings or browsers of their own.
INTEGRATION_FIXTURES = frozenset({
    "text_checkpoints", "repository", "fused_repository", "ensemble_server", "server", "fused_server", "triton",
    "client", "layout_server",
})
INTEGRATION_MODULES = frozenset({
    "test_training_faults", "test_distributed_training", "test_readme_commands", "test_server_launch",
    "test_security", "test_security_default_serve", "test_cli", "test_cli_lifecycle", "test_self_healing",
    "test_console_browser", "test_console_api", "test_training_text", "test_speech_training", "test_clip_training",
    "test_training_overwrite", "test_repository_safety", "test_versions", "test_lifecycle", "test_bench",
    "test_gpu_check", "test_gpu_profile", "test_soak", "test_gateway", "test_gateway_replicas",
    "test_gateway_console", "test_client_production", "test_products_create", "test_products_console",
    "test_deploy_files", "test_deploy_compose", "test_import_layers", "test_clip_export", "test_text_export", "test_speech_pipelines",
    "test_clip_pipelines", "test_text_pipelines", "test_fused_layout", "test_repository_names",
})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in INTEGRATION_MODULES or INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _serve_runs_in_tmp(tmp_path_factory) -> None:
    """`mmserve serve` keeps each run's Triton log under $MMSERVE_RUNS: not in the checkout during tests."""
    os.environ.setdefault("MMSERVE_RUNS", str(tmp_path_factory.mktemp("runs")))


def _head_conll(source: Path, target: Path, sentences: int) -> Path:
    blocks = source.read_text(encoding="utf-8").split("\n\n")
    target.write_text("\n\n".join(blocks[: sentences + 1]) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """The session's folder. MMSERVE_TEST_CACHE=DIR keeps it between runs (a developer's
    speed-up while iterating on one test file; CI never sets it, so it always builds afresh)."""
    cache = os.environ.get("MMSERVE_TEST_CACHE")
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        return Path(cache)
    return tmp_path_factory.mktemp("mmserve")


@pytest.fixture(scope="session")
def tiny_bert(workdir: Path) -> Path:
    from mmserve.training.text_tiny import make_tiny_bert

    return make_tiny_bert(workdir / "tiny-bert")


@pytest.fixture(scope="session")
def text_checkpoints(workdir: Path, tiny_bert: Path) -> dict[str, Path]:
    """Tiny classify, sentiment and NER checkpoints trained by the real training loop."""
    from mmserve.training.defaults import embedded_data
    from mmserve.training.text import TextTrainConfig, train_text

    data = workdir / "data"
    data.mkdir(exist_ok=True)
    jobs = {
        "classify": ("classify", subset_csv(embedded_data("intents"), data / "intents.csv", 4, 12)),
        "sentiment": ("classify", subset_csv(embedded_data("sentiment"), data / "sentiment.csv", 3, 10)),
        "ner": ("ner", _head_conll(embedded_data("ner/train"), data / "ner.conll", 40)),
    }
    checkpoints = {}
    for name, (task, path) in jobs.items():
        if (workdir / "ckpt" / name / "metrics.json").exists():  # kept by MMSERVE_TEST_CACHE
            checkpoints[name] = workdir / "ckpt" / name
            continue
        config = TextTrainConfig(
            base=str(tiny_bert), task=task, data=str(path), out=str(workdir / "ckpt" / name),
            epochs=1, batch_size=16, max_length=64, lr=1e-3,
        )
        checkpoints[name] = train_text(config).checkpoint
    return checkpoints


# Each product line adds its tiny models to the one repository the session serves:
# a function (workdir, repository) -> None, in a module of its own beside this one.
LINE_BUILDERS: list = []

from lines_speech import build_speech_line  # noqa: E402 - the speech line's tiny models

LINE_BUILDERS.append(build_speech_line)

from lines_clip import build_clip_line  # noqa: E402 - the CLIP line's tiny models

LINE_BUILDERS.append(build_clip_line)


def build_repository(workdir: Path, name: str, tiny_bert: Path, text_checkpoints: dict[str, Path], layout: str) -> Path:
    """Every product line's tiny models exported into workdir/name with `layout`."""
    from mmserve.exporters.text import export_text

    repo = workdir / name
    built = workdir / f"{name}.built"
    if built.exists():  # kept by MMSERVE_TEST_CACHE
        return repo
    export_text(tiny_bert, repo, layout=layout)
    export_text(text_checkpoints["classify"], repo, layout=layout)
    export_text(text_checkpoints["ner"], repo, layout=layout)
    export_text(text_checkpoints["sentiment"], repo, name="sentiment", layout=layout)
    for build in LINE_BUILDERS:
        build(workdir, repo, layout=layout)
    built.touch()
    return repo


@pytest.fixture(scope="session")
def repository(workdir: Path, tiny_bert: Path, text_checkpoints: dict[str, Path]) -> Path:
    """The session's repository: every pipeline as an ensemble of step models (the layout
    whose steps the versioning, lifecycle and bench tests look into)."""
    return build_repository(workdir, "model_repository", tiny_bert, text_checkpoints, layout="ensemble")


@pytest.fixture(scope="session")
def fused_repository(workdir: Path, tiny_bert: Path, text_checkpoints: dict[str, Path]) -> Path:
    """The same checkpoints with every pipeline fused into one model (exporters/fused.py)."""
    return build_repository(workdir, "model_repository_fused", tiny_bert, text_checkpoints, layout="fused")


def _serve(repository: Path, log: Path):
    from mmserve.server import ServerPorts, TritonServer

    with TritonServer(repository, ServerPorts.free(), log_file=log) as running:
        yield running


@pytest.fixture(scope="session")
def ensemble_server(repository: Path, workdir: Path):
    yield from _serve(repository, workdir / "triton.log")


@pytest.fixture(scope="session")
def server(ensemble_server):
    """The session's server (over `repository`); a module may run against both layouts instead."""
    return ensemble_server


@pytest.fixture(scope="session")
def fused_server(fused_repository: Path, workdir: Path):
    """A second server, over the fused repository: tests/layouts.py runs a module against both."""
    yield from _serve(fused_repository, workdir / "triton-fused.log")


@pytest.fixture(scope="session")
def triton(server):
    """A raw tritonclient gRPC client: the contract as any production app sees it."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture
def client(server):
    from mmserve.client import Client

    with Client(server.grpc_url, timeout=30.0) as c:
        yield c
