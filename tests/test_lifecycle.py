"""The lifecycle core on a real server: products apart from their steps, states from the
server, load/unload/reload on a live Triton, and the audit log.

Its own TritonServer over a copy of the session's repository (the text products loaded,
the others left unloaded), so the actions here never disturb the other tests.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from mmserve.client import Client, MmserveError, ModelNotReadyError
from mmserve.lifecycle import (
    AuditEntry,
    Lifecycle,
    ServerRequiredError,
    SwitchFailedError,
    UnknownProductError,
    VersionError,
    headline,
)
from mmserve.pipelines import PIPELINES, Kind
from mmserve.server import ServerPorts, TritonServer, repository_models

LOADED = ["text_embed", "text_classify", "sentiment"]


@pytest.fixture(scope="module")
def repo(repository: Path, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("lifecycle") / "repository"
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns(".mmserve-audit.jsonl"))
    return copy


@pytest.fixture(scope="module")
def own_server(repo: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("lifecycle-log") / "triton.log"
    with TritonServer(repo, ServerPorts.free(), models=LOADED, log_file=log) as running:
        yield running


@pytest.fixture
def lc_client(own_server):
    with Client(own_server.grpc_url, timeout=120.0) as client:
        yield client


@pytest.fixture
def lifecycle(repo: Path, lc_client: Client) -> Lifecycle:
    return Lifecycle(repo, lc_client, actor="tester@lifecycle")


def _ensembles(repo: Path) -> set[str]:
    return {p.parent.name for p in repo.glob("*/config.pbtxt") if 'platform: "ensemble"' in p.read_text()}


def test_products_are_the_pipelines_not_their_steps(repo: Path):
    products = {p.name: p for p in Lifecycle(repo).products()}

    assert set(products) == _ensembles(repo)
    steps = {step.name for p in products.values() for step in p.steps}
    assert not steps & set(products)
    assert {"text_tokenize", "text_embed_encoder", "sentiment_postprocess", "image_preprocess"} <= steps
    for product in products.values():  # the contract's tensors, as the kind says
        spec = PIPELINES[product.kind]
        assert [t.name for t in product.inputs] == [t.name for t in spec.inputs]
        assert {t.name for t in product.outputs} == {t.name for t in spec.outputs}
    assert products["sentiment"].kind is Kind.TEXT_CLASSIFY  # a named product of a kind
    assert products["keywords_w2v"].kind is Kind.AUDIO_CLASSIFY
    assert products["catalog_clip_text_embed"].kind is Kind.CLIP_TEXT_EMBED  # TEXT -> EMBEDDING, told by name
    assert products["text_embed"].kind is Kind.TEXT_EMBED


def test_steps_say_whether_they_are_shared(repo: Path):
    products = {p.name: p for p in Lifecycle(repo).products()}
    sentiment = {step.name: step for step in products["sentiment"].steps}

    assert list(sentiment) == ["text_tokenize", "sentiment_encoder", "sentiment_postprocess"]  # call order
    assert sentiment["text_tokenize"].shared and not sentiment["sentiment_encoder"].shared
    assert {step.name: step.shared for step in products["catalog_image_embed"].steps} == {
        "image_preprocess": True, "catalog_clip_image_encoder": True,  # also catalog_zero_shot_image's
    }
    assert all(step.state is None for step in sentiment.values())  # no server asked
    assert sentiment["sentiment_encoder"].versions == (1,)


def test_labels_are_what_the_product_answers(lifecycle: Lifecycle, lc_client: Client):
    sentiment = lifecycle.product("sentiment")
    answer = lc_client.classify_text("I love it", pipeline="sentiment")

    assert len(sentiment.labels) == answer.probs.shape[-1]
    assert answer.label in sentiment.labels
    assert lifecycle.product("text_embed").labels == ()


def test_states_come_from_the_server(repo: Path, lifecycle: Lifecycle):
    states = {p.name: p.state for p in lifecycle.products()}

    assert {states[name] for name in LOADED} == {"READY"}
    assert states["audio_classify"] == "UNLOADED" and states["image_embed"] == "UNLOADED"
    assert {p.state for p in Lifecycle(repo).products()} == {"UNKNOWN"}  # no server: not guessed
    tokenize = next(s for s in lifecycle.product("text_ner").steps if s.name == "text_tokenize")
    assert tokenize.state == "READY"  # loaded for the text products, though text_ner is not


def test_an_unknown_name_lists_the_products(lifecycle: Lifecycle):
    with pytest.raises(UnknownProductError) as raised:
        lifecycle.product("sentimental")
    assert "no product 'sentimental'" in str(raised.value) and "sentiment, " in str(raised.value)
    assert "text_embed" in raised.value.products

    with pytest.raises(UnknownProductError, match="'sentiment_encoder' is an internal step of sentiment"):
        lifecycle.unload("sentiment_encoder")


def test_unload_keeps_shared_steps_that_others_use_and_load_brings_it_back(lifecycle: Lifecycle, lc_client: Client):
    entry = lifecycle.unload("sentiment")

    assert entry.result == "ok" and "kept text_tokenize" in entry.detail
    product = lifecycle.product("sentiment")
    assert product.state == "UNLOADED"
    assert {s.name: s.state for s in product.steps} == {
        "text_tokenize": "READY", "sentiment_encoder": "UNLOADED", "sentiment_postprocess": "UNLOADED",
    }
    with pytest.raises(ModelNotReadyError):
        lc_client.classify_text("still there?", pipeline="sentiment")
    assert lc_client.embed_text("the others still serve").ndim == 1

    assert lifecycle.load("sentiment").result == "ok"
    assert lifecycle.product("sentiment").state == "READY"
    assert lc_client.classify_text("back again", pipeline="sentiment").label in lifecycle.product("sentiment").labels


def test_reload_of_an_unchanged_product_keeps_serving(lifecycle: Lifecycle, lc_client: Client):
    before = lc_client.embed_text("same weights")
    entry = lifecycle.reload("text_embed")

    assert entry.result == "ok" and entry.detail.endswith("already served (nothing new on disk); reloaded text_embed")
    assert lifecycle.product("text_embed").state == "READY"
    assert lc_client.embed_text("same weights").tolist() == pytest.approx(before.tolist(), abs=1e-6)


def test_actions_need_a_server_but_listing_does_not(repo: Path):
    offline = Lifecycle(repo, actor="tester@offline")
    with pytest.raises(ServerRequiredError, match="--server"):
        offline.load("text_embed")
    assert offline.product("text_embed").state == "UNKNOWN"


def test_a_failed_action_is_in_the_audit_log_with_its_error(repo: Path, lifecycle: Lifecycle):
    # A product whose encoder is missing: listed like any other, and its load fails on the server.
    broken = repo / "broken_embed"
    broken.mkdir()
    (broken / "1").mkdir()
    config = (repo / "text_embed" / "config.pbtxt").read_text()
    (broken / "config.pbtxt").write_text(
        config.replace('name: "text_embed"', 'name: "broken_embed"').replace("text_embed_encoder", "missing_encoder")
    )
    try:
        assert lifecycle.product("broken_embed").kind is Kind.TEXT_EMBED
        with pytest.raises(MmserveError) as raised:
            lifecycle.load("broken_embed")
        entry = lifecycle.audit(limit=1)[0]
        assert (entry.action, entry.product, entry.actor) == ("load", "broken_embed", "tester@lifecycle")
        assert entry.result != "ok" and str(raised.value) in entry.result
    finally:
        shutil.rmtree(broken)


def test_the_audit_log_is_append_only_json_lines_that_concurrent_writers_do_not_tear(
    repo: Path, own_server, lifecycle: Lifecycle
):
    log = lifecycle.audit_log
    before = log.read_text().splitlines() if log.exists() else []
    errors: list[BaseException] = []

    def admin(n: int) -> None:
        try:
            with Client(own_server.grpc_url, timeout=120.0) as client:
                for _ in range(5):
                    Lifecycle(repo, client, actor=f"writer{n}@test").reload("text_embed")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=admin, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    lines = log.read_text().splitlines()
    assert lines[: len(before)] == before  # appended, nothing rewritten
    records = [r for r in map(json.loads, lines[len(before):]) if r.get("phase") != "attempt"]  # each action's result
    assert sorted(r["actor"] for r in records) == sorted(f"writer{n}@test" for n in range(4) for _ in range(5))
    assert all(r["action"] == "reload" and r["result"] == "ok" and r["time"].endswith("+00:00") for r in records)
    newest = lifecycle.audit(limit=3)
    assert len(newest) == 3 and all(isinstance(e, AuditEntry) for e in newest)
    assert newest[0] == AuditEntry(**{key: records[-1][key] for key in AuditEntry.__dataclass_fields__})  # newest first


def test_rollback_goes_back_a_version_on_disk_and_on_the_server(
    repo: Path, lifecycle: Lifecycle, lc_client: Client, text_checkpoints: dict[str, Path]
):
    from mmserve.exporters.text import export_text

    first = lifecycle.product("sentiment").active_version
    export_text(text_checkpoints["sentiment"], repo, name="sentiment")
    reload = lifecycle.reload("sentiment")
    assert reload.result == "ok" and reload.detail == f"version {first} -> {first + 1}; reloaded sentiment"
    product = lifecycle.product("sentiment")
    assert (product.active_version, product.state) == (first + 1, "READY")
    assert [(v.version, v.active) for v in product.versions][-2:] == [(first, False), (first + 1, True)]
    assert product.card["version"] == first + 1 and product.card["kind"] == "text_classify"

    entry = lifecycle.rollback("sentiment")
    assert entry.result == "ok" and entry.detail.startswith(f"version {first + 1} -> {first}; reloaded sentiment")
    product = lifecycle.product("sentiment")
    assert (product.active_version, product.state) == (first, "READY")
    assert ("READY" in {m.state for m in lc_client.models() if m.name == "sentiment" and m.version == str(first)})
    assert lc_client.classify_text("fine again", pipeline="sentiment").label in product.labels
    with pytest.raises(VersionError, match=f"serves v{first}, its oldest version") as oldest:
        lifecycle.rollback("sentiment")
    assert "--to" not in str(oldest.value)  # no CLI flag in a message the console shows too
    with pytest.raises(VersionError, match="already serves"):
        lifecycle.rollback("sentiment", to=first)

    # Without a server the switch is made on disk only; a reload then brings the server along.
    offline = Lifecycle(repo, actor="tester@offline").rollback("sentiment", to=first + 1)
    assert "on disk" in offline.detail
    assert lifecycle.product("sentiment").active_version == first + 1
    lifecycle.reload("sentiment")
    assert lifecycle.product("sentiment").state == "READY"
    assert "READY" in {m.state for m in lc_client.models() if m.name == "sentiment" and m.version == str(first + 1)}


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_a_version_that_does_not_load_is_not_switched_to(
    repo: Path, lifecycle: Lifecycle, lc_client: Client, text_checkpoints: dict[str, Path], layout: str
):
    from mmserve.exporters.text import export_text

    served = lifecycle.product("sentiment").active_version
    export_text(text_checkpoints["sentiment"], repo, name="sentiment", layout=layout)
    broken = lifecycle.product("sentiment").active_version
    graphs = [*(repo / "sentiment_encoder" / str(broken)).glob("*.onnx"), *(repo / "sentiment" / str(broken)).glob("steps/*/1/*.onnx")]
    assert graphs
    for onnx in graphs:
        onnx.write_bytes(b"not an onnx graph")  # a corrupt upload, say

    with pytest.raises(SwitchFailedError, match=f"version {broken} of sentiment failed to load"):
        lifecycle.reload("sentiment")

    product = lifecycle.product("sentiment")
    assert (product.active_version, product.state) == (served, "READY")  # disk and server: the version before
    assert lc_client.classify_text("still answered", pipeline="sentiment").label in product.labels
    entry = lifecycle.audit(limit=1)[0]
    assert entry.action == "reload" and entry.result.startswith("SwitchFailedError")
    assert not list(repo.glob("*__v*"))  # the switch's own copies are gone


def test_triton_and_the_launcher_ignore_the_audit_log(repo: Path, lifecycle: Lifecycle, lc_client: Client):
    lifecycle.reload("text_embed")
    assert lifecycle.audit_log.parent == repo and lifecycle.audit_log.exists()
    names = {info.name for info in lc_client.models()}
    assert not any(name.startswith(".") for name in names)
    assert set(repository_models(repo)) <= names


def test_the_client_lists_loaded_products_without_their_steps(lc_client: Client, lifecycle: Lifecycle):
    served = {p.name: p for p in lc_client.products()}

    assert set(served) == set(LOADED)
    assert served["sentiment"].kind is Kind.TEXT_CLASSIFY and served["sentiment"].state == "READY"
    assert served["sentiment"].steps == tuple(s.name for s in lifecycle.product("sentiment").steps)


def test_the_async_client_lists_the_same_products(own_server, lc_client: Client):
    import asyncio

    from mmserve.client import AsyncClient

    async def listed() -> list:
        async with AsyncClient(own_server.grpc_url, timeout=60.0) as client:
            return await client.products()

    assert asyncio.run(listed()) == lc_client.products()


# --- pure functions: no server ------------------------------------------------------------


def _config(name: str, inputs, outputs, platform: str = "python", steps: tuple[str, ...] = ()):
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig(name=name, platform=platform)
    for tensors, target in ((inputs, config.input), (outputs, config.output)):
        for tensor_name, dtype in tensors:
            target.add(name=tensor_name, data_type=model_config_pb2.DataType.Value(dtype), dims=[-1])
    for step in steps:
        config.ensemble_scheduling.step.add(model_name=step)
    return config


def test_kinds_with_the_same_tensors_are_told_apart_by_card_then_name():
    from mmserve.client.products import kind_of

    text_to_embedding = _config("x", [("TEXT", "TYPE_STRING")], [("EMBEDDING", "TYPE_FP32")], "ensemble")
    assert kind_of("catalog_clip_text_embed", text_to_embedding) is Kind.CLIP_TEXT_EMBED
    assert kind_of("clip_text_embed", text_to_embedding) is Kind.CLIP_TEXT_EMBED
    assert kind_of("text_embed", text_to_embedding) is Kind.TEXT_EMBED
    assert kind_of("faq_vectors", text_to_embedding) is Kind.TEXT_EMBED  # the contract's first
    assert kind_of("faq_vectors", text_to_embedding, hint="clip_text_embed") is Kind.CLIP_TEXT_EMBED
    assert kind_of("faq_vectors", text_to_embedding, hint="audio_embed") is Kind.TEXT_EMBED  # a hint must fit
    tokenizer = _config("t", [("TEXT", "TYPE_STRING")], [("input_ids", "TYPE_INT64")])
    assert kind_of("text_tokenize", tokenizer) is None


def test_a_step_is_never_a_product_but_a_fused_pipeline_is():
    from mmserve.client.products import find_products

    text, embedding = [("TEXT", "TYPE_STRING")], [("EMBEDDING", "TYPE_FP32")]
    configs = {
        "search": _config("search", text, embedding, "ensemble", steps=("search_inner",)),
        "search_inner": _config("search_inner", text, embedding),  # matches the contract, but a step
        "fused_embed": _config("fused_embed", text, embedding),  # one model serving the pipeline
        "text_tokenize": _config("text_tokenize", text, [("input_ids", "TYPE_INT64")]),
    }
    assert find_products(configs) == {"fused_embed": Kind.TEXT_EMBED, "search": Kind.TEXT_EMBED}


def test_the_headline_is_the_metric_training_selected_on():
    card = {"metrics": {"metric": "f1", "dev_metrics": {"loss": 0.3, "f1": 0.8123}}}
    assert headline(card) == "dev f1 0.812"
    clip = {"val_metrics": {"image_to_text_r1": 0.25, "text_to_image_r1": 0.125, "zero_shot_top1": 0.5}}
    assert headline({"kind": "zero_shot_image", "metrics": clip}) == "val zero_shot_top1 0.500"
    assert headline({"kind": "clip_text_embed", "metrics": clip}) == "val text_to_image_r1 0.125"
    assert headline({"metrics": clip}) == "val image_to_text_r1 0.250"
    assert headline({"metrics": None}) == headline({}) == ""


def test_the_audit_view_reads_the_newest_entries_and_skips_torn_lines(tmp_path: Path):
    log = tmp_path / "audit.jsonl"
    records = [
        {"time": f"2026-01-01T00:00:{i % 60:02d}+00:00", "actor": f"a{i}@h", "action": "reload",
         "product": "p" * (i % 300), "detail": "d", "result": "ok"}
        for i in range(2000)
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(1500, '{"time": "torn')  # a writer killed mid-line, long ago
    log.write_text("\n".join(lines) + '\n{"half": ')  # and one being written now

    newest = Lifecycle(tmp_path, audit_log=log).audit(limit=600)

    assert [e.actor for e in newest] == [f"a{i}@h" for i in range(1999, 1399, -1)]
    assert Lifecycle(tmp_path, audit_log=tmp_path / "none.jsonl").audit() == []


def test_version_changes_are_worded_by_their_direction_and_drift_names_the_command():
    from dataclasses import replace

    from mmserve.lifecycle import Product, VersionChange, VersionInfo, drift_text, version_changes

    back, forward, first = VersionChange("sentiment", 2, 1), VersionChange("sentiment", 1, 2), VersionChange("s", None, 1)
    assert (back.action, back.label, back.question) == ("rollback", "Roll back to v1", "Roll sentiment back from v2 to v1?")
    assert (forward.action, forward.label) == ("roll-forward", "Roll forward to v2")
    assert "a later version (v2)" in forward.effect and "earlier" in back.effect
    assert (first.action, first.label, first.question) == ("make-live", "Make v1 live", "Make v1 of s live?")
    assert drift_text("sentiment", 1, 3) == "v3 exported, v1 serving — run `mmserve reload sentiment`"
    assert drift_text("sentiment", 3, 1) == "v1 made active on disk, v3 serving — run `mmserve reload sentiment`"
    assert drift_text("sentiment", 2, 2) == drift_text("sentiment", None, 2) == ""

    versions = tuple(VersionInfo(v, v == 2, {}) for v in (1, 2, 3))
    served = Product("p", Kind.TEXT_EMBED, (), (), (), (), versions, 2, "READY", "", served_version=1,
                     drift=drift_text("p", 1, 2))
    assert served.live_version == 1 and served.actions == ("unload", "reload")
    assert [(c.action, c.target) for c in version_changes(served)] == [("roll-forward", 2), ("roll-forward", 3)]
    unloaded = replace(served, state="UNLOADED", served_version=None, drift="")
    assert unloaded.actions == ("load",) and {c.action for c in version_changes(unloaded)} == {"make-live"}
    offline = replace(served, state="UNKNOWN", served_version=None, drift="")
    assert offline.actions == () and offline.live_version == 2


def test_a_repository_is_told_from_a_copy_and_from_another_servers(tmp_path: Path):
    from mmserve.served_repository import ID_FILE, ensure_repository_id, mismatch, repository_id, server_name

    served = tmp_path / "served"
    (served / "m").mkdir(parents=True)
    (served / "m" / "config.pbtxt").write_text('name: "m"')
    ident = ensure_repository_id(served)
    assert ident and repository_id(served) == ident == ensure_repository_id(served)  # made once
    copy = tmp_path / "copy"
    shutil.copytree(served, copy)
    assert repository_id(copy) is None  # its id file names the folder it was made for
    assert ensure_repository_id(copy) not in (None, ident)  # served itself: an id of its own
    name = server_name("mmserve-abc", ident)
    url = "10.0.0.1:8001"  # not this user's local server: the id decides
    assert mismatch(served, url, name, None) is None
    assert "serves the repository with id" in (mismatch(copy, url, name, None) or "")
    # A tritonserver started by hand reports no id: its index against the folder's models.
    assert mismatch(served, url, "triton", lambda: ["m", "m__v2"]) is None
    other = mismatch(served, url, "triton", lambda: ["x", "y"])
    assert other and "it serves x, y, which this folder lacks" in other and "this folder has m" in other
    assert (served / ID_FILE).read_text().count(ident) == 1
