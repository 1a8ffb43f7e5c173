"""Product versions: an export adds a version named in the configs, its card says where it
came from, a live switch (re-export, rollback, another label set) fails no request on a
real Triton, the served version survives a restart, and retention keeps what is served."""
from __future__ import annotations

import importlib.metadata
import json
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mmserve.exporters import versions
from mmserve.exporters.repository import ModelFolder, write_models
from mmserve.exporters.text import export_text
from mmserve.exporters.triton_config import Tensor, ensemble_config, ensemble_step, python_model_config
from mmserve.exporters.versions import VersionNotFoundError, read_config
from mmserve.pipelines import EMBEDDING, TEXT

PRODUCT = "text_classify"
STEPS = ("text_classify_encoder", "text_classify_postprocess")


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, text_checkpoints) -> Path:
    """text_classify exported twice from one checkpoint (same labels, same settings)."""
    repository = tmp_path_factory.mktemp("versions") / "repo"
    export_text(text_checkpoints["classify"], repository, layout="ensemble")
    export_text(text_checkpoints["classify"], repository, layout="ensemble")
    return repository


def _policy(repository: Path, model: str) -> list[int]:
    config = read_config(repository / model / "config.pbtxt")
    assert config is not None
    return versions.policy_versions(config)


def test_an_export_adds_a_version_and_the_configs_name_the_served_one(two_versions: Path):
    repo = two_versions
    assert versions.product_versions(repo, PRODUCT) == [1, 2] and versions.active_version(repo, PRODUCT) == 2
    assert _policy(repo, PRODUCT) == [2]
    ensemble = read_config(repo / PRODUCT / "config.pbtxt")
    pins = {step.model_name: step.model_version for step in ensemble.ensemble_scheduling.step}
    assert pins == {"text_tokenize": -1, "text_classify_encoder": 2, "text_classify_postprocess": 2}
    for step in STEPS:  # the same config twice: version 1 stays loaded beside 2 (failure-free switch)
        assert _policy(repo, step) == [1, 2]
        assert (repo / step / "1" / "model.py").is_file() and (repo / step / "2" / "model.py").is_file()
    assert (repo / "text_classify_encoder" / "1" / "model.onnx").is_file()
    assert versions.version_folders(repo / "text_tokenize") == [1]  # shared pre-processing: one folder
    assert read_config(repo / "text_tokenize" / "config.pbtxt").version_policy.WhichOneof("policy_choice") is None
    assert not list(repo.glob(".mmserve-staging-*"))


def test_the_card_records_the_version_s_origin_and_quality(two_versions: Path, text_checkpoints, tiny_bert: Path):
    checkpoint = text_checkpoints["classify"]
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    training = json.loads((checkpoint / "training_config.json").read_text())
    card = versions.read_card(two_versions, PRODUCT, 2)
    assert (card["product"], card["kind"], card["version"], card["pipelines"]) == (PRODUCT, "text_classify", 2, [PRODUCT])
    # the base as people name it, and the folder it was read from; data paths absolute
    assert (card["base_model"], training["base_name"]) == ("tiny-bert", "tiny-bert")
    assert Path(card["base_model_path"]) == Path(training["base"]) == tiny_bert
    assert card["training_data"]["path"] == str(training["data"]) and Path(training["data"]).is_absolute()
    assert (card["training_data"]["train_rows"], card["training_data"]["held_out_rows"]) == (metrics["n_train"], metrics["n_dev"])
    assert card["metrics"] == metrics and card["profile"] == "cpu" and card["int8"] is None
    parity = card["parity"]["encoder"]
    assert parity["max_abs_diff"] <= parity["tolerance"] and parity["min_cosine"] >= parity["min_cosine_required"]
    assert datetime.fromisoformat(card["exported_at"]).utcoffset().total_seconds() == 0
    assert card["mmserve_version"] == importlib.metadata.version("mmserve")
    assert card["steps"] == [
        {"model": "text_tokenize", "version": None, "shared": True},
        {"model": "text_classify_encoder", "version": 2, "shared": False},
        {"model": "text_classify_postprocess", "version": 2, "shared": False},
    ]
    assert versions.read_card(two_versions, PRODUCT, 7) == {}


def test_switching_to_a_version_that_cannot_be_served_is_refused(two_versions: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    shutil.copytree(two_versions, repo)
    with pytest.raises(VersionNotFoundError, match="has no version 9; versions: 1, 2"):
        versions.set_active_version(repo, PRODUCT, 9)
    shutil.rmtree(repo / "text_classify_encoder" / "1" / "model_root")  # as an export before versions left it
    before = (repo / PRODUCT / "config.pbtxt").read_bytes()
    with pytest.raises(VersionNotFoundError, match="text_classify_encoder lack 1/model_root/config.pbtxt"):
        versions.set_active_version(repo, PRODUCT, 1)
    assert (repo / PRODUCT / "config.pbtxt").read_bytes() == before


class Traffic:
    """Threads calling text_classify without pause; every answer or error is kept."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.answers: list[int] = []  # the number of classes of each answer
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._call, daemon=True) for _ in range(threads)]

    def _call(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"where is my order?"]], dtype=np.object_))
        while not self.stop.is_set():
            try:
                self.answers.append(client.infer(PRODUCT, [text]).as_numpy("PROBS").shape[-1])
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                self.errors.append(str(error))
        client.close()

    def during(self, change) -> int:
        """Run `change` while the threads call; the number of answers that arrived meanwhile."""
        before = len(self.answers)
        change()
        self._wait_for(before + 20)  # requests kept flowing after the change too
        return len(self.answers) - before

    def _wait_for(self, answers: int) -> None:
        while len(self.answers) < answers and not self.errors:
            time.sleep(0.05)

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        self._wait_for(20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def _served(admin: grpcclient.InferenceServerClient, model: str) -> list[str]:
    index = admin.get_model_repository_index(as_json=True)["models"]
    return sorted(m["version"] for m in index if m["name"] == model and m.get("state") == "READY")


def test_live_switches_fail_no_request_and_the_served_version_survives_a_restart(
    tmp_path: Path, text_checkpoints
):
    from mmserve.server import ServerPorts, TritonServer

    repo = tmp_path / "repo"
    export_text(text_checkpoints["classify"], repo, layout="ensemble")
    classify_labels = len((text_checkpoints["classify"] / "labels.txt").read_text().split())
    sentiment_labels = len((text_checkpoints["sentiment"] / "labels.txt").read_text().split())
    assert classify_labels != sentiment_labels  # the third switch changes the label set
    log = tmp_path / "triton.log"
    with TritonServer(repo, ServerPorts.free(), log_file=log) as server:
        admin = grpcclient.InferenceServerClient(server.grpc_url)

        def go_live(served: int) -> None:
            versions.serve_active(repo, PRODUCT, served, admin.load_model, admin.unload_model)

        with Traffic(server.grpc_url) as traffic:
            # a re-export with the same labels: version 1 stays loaded beside 2
            traffic.during(lambda: (export_text(text_checkpoints["classify"], repo, layout="ensemble"), go_live(1)))
            assert _served(admin, PRODUCT) == ["2"] and _policy(repo, "text_classify_encoder") == [1, 2]
            # a rollback through the API, with the server's model control
            traffic.during(lambda: versions.set_active_version(repo, PRODUCT, 1, admin.load_model, admin.unload_model))
            assert _served(admin, PRODUCT) == ["1"]
            # another label set: the configs differ, so the served version is bridged
            traffic.during(lambda: (export_text(text_checkpoints["sentiment"], repo, name=PRODUCT, layout="ensemble"), go_live(1)))
            assert _served(admin, PRODUCT) == ["3"] and _policy(repo, "text_classify_encoder") == [3]
            traffic.during(lambda: None)
        assert traffic.errors == [], traffic.errors[:3]
        assert traffic.answers[-1] == sentiment_labels
        assert classify_labels in traffic.answers  # the earlier versions were really served
        assert not [p.name for p in repo.iterdir() if "__v" in p.name]  # bridges removed
        assert not [m for m in admin.get_model_repository_index(as_json=True)["models"] if "__v" in m["name"]
                    and m.get("state") == "READY"]
        # on disk only (no server told): version 2 is served from the next start, though 3 is newest
        versions.set_active_version(repo, PRODUCT, 2)
        admin.close()
    with TritonServer(repo, ServerPorts.free(), log_file=log) as server:
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        assert _served(admin, PRODUCT) == ["2"]
        assert _served(admin, "text_classify_encoder") == ["2"]
        admin.close()


def test_a_fused_pipeline_switches_versions_live_without_a_failed_request(tmp_path: Path, text_checkpoints):
    """The fused layout's pipeline is one model: Triton loads version V beside U and swaps."""
    from mmserve.server import ServerPorts, TritonServer

    repo = tmp_path / "repo"
    export_text(text_checkpoints["classify"], repo, layout="fused")
    classify_labels = len((text_checkpoints["classify"] / "labels.txt").read_text().split())
    sentiment_labels = len((text_checkpoints["sentiment"] / "labels.txt").read_text().split())
    log = tmp_path / "triton.log"
    with TritonServer(repo, ServerPorts.free(), log_file=log) as server:
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        assert [m["name"] for m in admin.get_model_repository_index(as_json=True)["models"]] == [PRODUCT]

        def go_live(served: int) -> None:
            versions.serve_active(repo, PRODUCT, served, admin.load_model, admin.unload_model)

        with Traffic(server.grpc_url) as traffic:
            traffic.during(lambda: (export_text(text_checkpoints["classify"], repo, layout="fused"), go_live(1)))
            assert _served(admin, PRODUCT) == ["2"]
            traffic.during(lambda: versions.set_active_version(repo, PRODUCT, 1, admin.load_model, admin.unload_model))
            assert _served(admin, PRODUCT) == ["1"]
            # another label set (labels.txt at the pipeline's root changes with the version)
            traffic.during(lambda: (export_text(text_checkpoints["sentiment"], repo, name=PRODUCT, layout="fused"), go_live(1)))
            assert _served(admin, PRODUCT) == ["3"]
            traffic.during(lambda: None)
        assert traffic.errors == [], traffic.errors[:3]
        assert traffic.answers[-1] == sentiment_labels and classify_labels in traffic.answers
        assert (repo / PRODUCT / "labels.txt").read_text().split() == (text_checkpoints["sentiment"] / "labels.txt").read_text().split()
        assert not [p.name for p in repo.iterdir() if "__v" in p.name]
        versions.set_active_version(repo, PRODUCT, 2)  # on disk only: served from the next start
        admin.close()
    with TritonServer(repo, ServerPorts.free(), log_file=log) as server:
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        assert _served(admin, PRODUCT) == ["2"]
        admin.close()


def test_keep_removes_old_versions_but_never_a_served_one(tmp_path: Path, text_checkpoints):
    repo = tmp_path / "repo"
    for _ in range(3):
        written = export_text(text_checkpoints["classify"], repo, keep=2, layout="ensemble")
    assert written.version == 3
    for model in (PRODUCT, *STEPS):
        assert versions.version_folders(repo / model) == [2, 3]
    versions.set_active_version(repo, PRODUCT, 2)
    export_text(text_checkpoints["classify"], repo, keep=1, layout="ensemble")  # version 4; 2 was served until now
    assert versions.active_version(repo, PRODUCT) == 4
    for model in STEPS:
        assert versions.version_folders(repo / model) == [2, 4] and _policy(repo, model) == [2, 4]
    assert versions.product_versions(repo, PRODUCT) == [2, 4]


def _config_only_product(prefix: str) -> list[ModelFolder]:
    """Two ensembles sharing a private step and a shared one, like one CLIP export's pipelines."""
    pre = python_model_config("pre", [Tensor.from_spec(TEXT)], [Tensor("ids", "TYPE_INT64", (-1,))])
    encoder = python_model_config(f"{prefix}_encoder", [Tensor("ids", "TYPE_INT64", (-1,))], [Tensor("vec", "TYPE_FP32", (4,))])
    steps = [
        ensemble_step("pre", {"TEXT": "TEXT"}, {"ids": "ids"}),
        ensemble_step(f"{prefix}_encoder", {"ids": "ids"}, {"vec": "EMBEDDING"}),
    ]
    return [
        ModelFolder("pre", pre, {"1/model.py": "# shared\n"}, shared=True),
        ModelFolder(f"{prefix}_encoder", encoder, {"1/model.py": "# encoder\n", "labels.txt": "a\nb\n"}),
        *(ModelFolder(name, ensemble_config(name, [Tensor.from_spec(TEXT)], [Tensor.from_spec(EMBEDDING, (4,))], steps))
          for name in (f"{prefix}_embed", f"{prefix}_search")),
    ]


def test_products_exported_together_switch_together(tmp_path: Path):
    repo = tmp_path / "repo"
    first = write_models(repo, _config_only_product("a"))
    second = write_models(repo, _config_only_product("a"))
    assert (first.version, second.version) == (1, 2) and second.ensembles == ("a_embed", "a_search")
    assert versions.read_card(repo, "a_search", 2)["pipelines"] == ["a_embed", "a_search"]
    assert versions.reload_order(repo, "a_search") == ["a_embed", "a_search"]
    assert versions.set_active_version(repo, "a_search", 1) == ["a_embed", "a_search"]
    for ensemble in ("a_embed", "a_search"):
        config = read_config(repo / ensemble / "config.pbtxt")
        assert versions.policy_versions(config) == [1]
        assert [s.model_version for s in config.ensemble_scheduling.step] == [-1, 1]
    assert (repo / "a_encoder" / "labels.txt").read_text() == "a\nb\n"
    assert versions.version_folders(repo / "pre") == [1]


def test_a_version_that_fails_to_load_is_not_switched_to(tmp_path: Path, text_checkpoints):
    from mmserve.server import ServerPorts, TritonServer

    repo = tmp_path / "repo"
    export_text(text_checkpoints["classify"], repo, layout="ensemble")
    with TritonServer(repo, ServerPorts.free(), log_file=tmp_path / "triton.log") as server:
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        export_text(text_checkpoints["classify"], repo, layout="ensemble")
        (repo / "text_classify_encoder" / "2" / "model.onnx").write_bytes(b"not an ONNX graph")  # broken on disk
        with Traffic(server.grpc_url) as traffic:

            def switch() -> None:
                with pytest.raises(versions.VersionLoadError, match="still serves version 1, and the repository names version 1"):
                    versions.serve_active(repo, PRODUCT, 1, admin.load_model, admin.unload_model)

            traffic.during(switch)
        assert traffic.errors == [], traffic.errors[:3]
        assert versions.active_version(repo, PRODUCT) == 1 and _served(admin, PRODUCT) == ["1"]
        assert not [p.name for p in repo.iterdir() if "__v" in p.name]
        ready = [m["name"] for m in admin.get_model_repository_index(as_json=True)["models"] if m.get("state") == "READY"]
        assert not [name for name in ready if "__v" in name]
        assert _policy(repo, "text_classify_encoder") == [1]  # the broken version is not kept loaded
        admin.load_model(PRODUCT)  # and the server still reloads what the disk names
        assert _served(admin, PRODUCT) == ["1"]
        admin.close()
