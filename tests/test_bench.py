"""`mmserve bench` on the tiny test repository: well-formed results, never timed assertions.

The numbers live in docs/benchmarks.md; here we check that every part of the
bench runs against the session's real server and writes what it promises.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mmserve.bench import inputs
from mmserve.bench.perf import parse_csv
from mmserve.pipelines import PIPELINES, Kind, spec


# ---- pure functions ----
def test_kind_is_recognised_from_tensor_names():
    from mmserve.bench.run import kind_of

    assert kind_of("sentiment", ["TEXT"], ["PROBS", "LABEL"]) == Kind.TEXT_CLASSIFY
    assert kind_of("clip_text_embed", ["TEXT"], ["EMBEDDING"]) == Kind.CLIP_TEXT_EMBED
    assert kind_of("my_embedder", ["TEXT"], ["EMBEDDING"]) in (Kind.TEXT_EMBED, Kind.CLIP_TEXT_EMBED)
    assert kind_of("text_tokenize", ["TEXT"], ["input_ids", "attention_mask", "offsets", "word_ids"]) is None


def test_every_kind_has_realistic_inputs_that_perf_analyzer_can_read(tmp_path: Path):
    for kind in Kind:
        requests = inputs.requests_for(kind, 3)
        contract = spec(kind)
        for request in requests:
            assert set(request) == {t.name for t in contract.inputs}
        data = json.loads(inputs.perf_json(requests, contract, tmp_path / f"{kind.value}.json").read_text())
        assert len(data["data"]) == 3
        for step in data["data"]:
            for tensor in contract.inputs:
                assert "content" in step[tensor.name] or "b64" in step[tensor.name]
        batch = inputs.stack(requests)
        assert all(len(v) == 3 for v in batch.values())


def test_sentences_are_real_and_of_varied_length():
    texts = inputs.sentences(200)
    words = [len(t.split()) for t in texts]
    assert len(set(texts)) > 150 and min(words) <= 3 and max(words) >= 15


def test_images_are_photo_sized_jpegs_sent_with_length_prefixes(tmp_path: Path):
    from PIL import Image

    requests = inputs.requests_for(Kind.IMAGE_EMBED, 2)
    jpeg = bytes(requests[0]["IMAGE"][0])
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (640, 480) and len(jpeg) > 20_000
    step = json.loads(inputs.perf_json(requests, spec(Kind.IMAGE_EMBED), tmp_path / "i.json").read_text())["data"][0]
    raw = base64.b64decode(step["IMAGE"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(jpeg) and raw[4:] == jpeg


def test_audio_is_one_second_of_16khz_speech():
    (request,) = inputs.requests_for(Kind.AUDIO_CLASSIFY, 1)
    audio = request["AUDIO"]
    assert audio.dtype == np.float32 and audio.shape == (16_000,) and 0.1 < np.abs(audio).max() <= 1.0
    assert int(request["SAMPLE_RATE"][0]) == 16_000


def test_perf_analyzer_csv_is_parsed(tmp_path: Path):
    path = tmp_path / "out.csv"
    path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
        "Avg latency,request/response,response wait\n"
        "2,937.555,3,848,1,33,1020,208,7,1814,3093,3877,6685,2124,10,2096\n"
    )
    (row,) = parse_csv(path, "text_embed", "triton-grpc", "concurrency")
    assert (row.load, row.throughput, row.p50_us, row.p99_us, row.server_compute_infer_us) == (2, 937.555, 1814, 6685, 1020)
    openai = tmp_path / "peer.csv"
    openai.write_text("Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,"
                      "p99 latency\n8,71.65,153,4,105872,143341,150061,157477\n")
    (peer,) = parse_csv(openai, "minilm", "openai", "concurrency")
    assert peer.avg_us is None and peer.server_queue_us is None and peer.p99_us == 157477


# ---- against the session's real server ----
def test_the_in_process_pipeline_answers_what_the_server_answers(server, repository: Path, triton):
    import tritonclient.grpc as grpcclient

    from mmserve.bench.inprocess import InProcessPipeline

    texts = inputs.sentences(3, seed=1)
    items = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = grpcclient.InferInput("TEXT", list(items.shape), "BYTES")
    tensor.set_data_from_numpy(items)
    served = triton.infer("text_embed", [tensor]).as_numpy("EMBEDDING")
    local = InProcessPipeline(repository, "text_embed")({"TEXT": items})["EMBEDDING"]
    np.testing.assert_allclose(local, served, atol=1e-5)


def test_every_pipeline_of_the_server_is_found_and_runs_in_process(server, repository: Path, triton):
    from mmserve.bench.inprocess import InProcessPipeline
    from mmserve.bench.run import discover

    found = dict(discover(triton))
    assert {"text_embed", "text_classify", "text_ner", "sentiment"} <= set(found)
    assert found["sentiment"] == Kind.TEXT_CLASSIFY
    for name, kind in found.items():
        outputs = InProcessPipeline(repository, name)(inputs.stack(inputs.requests_for(kind, 2)))
        assert set(outputs) == {t.name for t in PIPELINES[kind].outputs}
        assert all(len(v) == 2 for v in outputs.values())


@pytest.fixture(scope="module")
def bench_run(server, repository: Path, text_checkpoints, tiny_bert, tmp_path_factory):
    from mmserve.bench.run import BenchConfig, run_bench

    out = tmp_path_factory.mktemp("bench")
    config = BenchConfig(
        repository=repository, url=server.grpc_url, pipelines=["text_embed", "text_classify"],
        concurrency=[1, 2], out=out, skip_peers=True, measurement_interval_ms=500, requests=16,
        baseline_seconds=0.1, checkpoints={"text_classify": text_checkpoints["classify"], "text_embed": tiny_bert},
        command="mmserve bench (test)",
    )
    return run_bench(config, log=lambda _: None), out


def test_bench_writes_a_row_per_pipeline_and_load_with_server_side_steps(bench_run):
    results, out = bench_run
    rows = [r for r in results["perf"] if "error" not in r]
    assert {(r["pipeline"], r["load"]) for r in rows} == {(p, c) for p in ("text_embed", "text_classify") for c in (1, 2)}
    for row in rows:
        assert row["throughput"] > 0 and 0 < row["p50_us"] <= row["p99_us"]
        encoder = row["steps"][f"{row['pipeline']}_encoder"]
        assert encoder["requests"] > 0 and encoder["avg_batch"] >= 1 and encoder["compute_infer_us"] > 0
        assert "text_tokenize" in row["steps"]
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert json.loads((out / "results.json").read_text())["settings"]["concurrency"] == [1, 2]


def test_cpu_meter_attributes_cores_to_the_process_that_used_them():
    import os
    import time

    from mmserve.bench.server_stats import CpuMeter

    meter = CpuMeter(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of this process's CPU
        pass
    used = meter.read()
    mine = sum(v for k, v in used.items() if k not in ("perf_analyzer", "idle or other"))
    assert mine > 0.2, used
    assert used["idle or other"] >= 0 and used["perf_analyzer"] >= 0


def test_bench_measures_the_in_process_baseline_per_batch_size(bench_run):
    from mmserve.bench.inprocess import BATCH_SIZES
    from mmserve.bench.report import efficiency

    results, _ = bench_run
    for pipeline in ("text_embed", "text_classify"):
        baseline = results["baselines"][pipeline]
        assert [t["batch"] for t in baseline["timings"]] == list(BATCH_SIZES)
        assert all(t["throughput"] > 0 for t in baseline["timings"])
        eff = efficiency(results, pipeline)
        assert eff["latency_ratio"] > 0 and eff["throughput_ratio"] is None  # no c=8 in this run


def test_runtime_table_has_torch_fp32_and_int8_with_drift_and_accuracy(bench_run):
    results, _ = bench_run
    rows = {(r["encoder"], r["runtime"]): r for r in results["runtimes"]["rows"]}
    for encoder in ("text_embed_encoder", "text_classify_encoder"):
        assert {runtime for e, runtime in rows if e == encoder} == {"torch eager", "ORT fp32", "ORT INT8"}
        fp32 = rows[(encoder, "ORT fp32")]
        assert fp32["reference"] == "torch eager" and fp32["min_cosine"] > 0.999  # the export's parity
        assert rows[(encoder, "ORT INT8")]["b8_items_per_s"] > 0
    classify = rows[("text_classify_encoder", "ORT INT8")]
    assert 0 <= classify["accuracy"] <= 1 and classify["accuracy_items"] > 0


def test_report_renders_tables_and_png_plots(bench_run, tmp_path: Path):
    from mmserve.bench.report import ANALYSIS_END, ANALYSIS_START, write_report

    results, _ = bench_run
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text(f"old\n{ANALYSIS_START}\nhand-written reading\n{ANALYSIS_END}\n")
    write_report(results, docs)
    text = docs.read_text()
    for heading in ("## Machine and method", "## Targets", "## Serving efficiency", "### `text_embed`",
                    "### `text_classify`", "## Runtimes", "mmserve bench (test)"):
        assert heading in text
    assert "hand-written reading" in text and "old\n" not in text
    for pipeline in ("text_embed", "text_classify"):
        png = docs.parent / "img" / f"bench-{pipeline}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"img/bench-{pipeline}.png" in text


def test_headlines_and_report_text_match_what_was_run(bench_run):
    """The terminal gets a figure line per pipeline; the report names the run's own command and
    shows no targets table when the run measured none of the targets."""
    import copy

    from mmserve.bench.report import headlines, render

    results, _ = bench_run
    lines = headlines(results)
    assert [line.split(":")[0] for line in lines] == ["text_embed", "text_classify"]
    assert all("p50 c=1" in line and "infer/s at c=2" in line and "in-process" in line for line in lines)
    text = render(results, {})
    assert "Generated by `mmserve bench (test)`" in text and "--report" not in text.split("\n")[2]
    without = copy.deepcopy(results)
    without["pipelines"] = [p for p in without["pipelines"] if p["name"] != "text_embed"]
    without["baselines"] = {}  # every pipeline's targets compare against its in-process baseline
    without["perf"] = [r for r in without["perf"] if r["pipeline"] != "text_embed"]
    without["peers"], without["runtimes"] = {}, None
    assert "## Targets" not in render(without, {})


def test_cli_renders_a_report_from_saved_results(bench_run, tmp_path: Path):
    from mmserve.cli import main

    _, out = bench_run
    docs = tmp_path / "benchmarks.md"
    assert main(["bench", "--from-results", str(out), "--docs", str(docs)]) == 0
    assert "## Targets" in docs.read_text()


def test_results_json_matches_its_typed_schema(bench_run, two_layout_run):
    """results.json as written (one layout with the runtime table; two layouts through the CLI) validates
    against mmserve/bench/results.py's TypedDicts, strictly, with no undeclared key."""
    from test_bench_results_schema import validate_results

    for out in (bench_run[1], two_layout_run[1]):
        validate_results(json.loads((out / "results.json").read_text()))


def test_cli_refuses_an_unknown_pipeline_with_a_clear_message(server, repository: Path, capsys, tmp_path: Path):
    from mmserve.cli import main

    code = main(["bench", "nope", "--url", server.grpc_url, "--repository", str(repository), "--skip-peers",
                 "--out", str(tmp_path)])
    assert code == 2 and "no pipeline named nope" in capsys.readouterr().err


def test_runtime_table_covers_the_other_lines_encoders(server, repository: Path, triton, workdir: Path, tmp_path: Path):
    """One pipeline per non-text kind of the session's repository: ORT fp32 and INT8 rows (torch where known)."""
    from mmserve.bench.run import discover
    from mmserve.bench.runtimes import TEXT_KINDS, measure_runtimes

    others = list({kind: (name, kind) for name, kind in reversed(discover(triton)) if kind not in TEXT_KINDS}.values())
    if not others:
        pytest.skip("no other product line in the test repository")
    checkpoints: dict[str, Path] = {}
    try:
        from lines_speech import W2V_PIPELINE, speech_paths

        paths = speech_paths(workdir)
        checkpoints = {"audio_classify": paths.whisper, "audio_embed": paths.whisper, W2V_PIPELINE: paths.wav2vec2}
    except ImportError:
        pass
    requests = {name: inputs.requests_for(kind, 8) for name, kind in others}
    table = measure_runtimes(repository, others, requests, checkpoints, tmp_path, seconds=0.0, batches=(2, 1), min_calls=2)
    by_encoder: dict[str, set[str]] = {}
    for row in table.rows:
        by_encoder.setdefault(row.encoder, set()).add(row.runtime)
        assert row.b1_ms > 0 and row.b8_items_per_s > 0
        if row.runtime == "ORT fp32" and row.reference == "torch eager":
            assert row.min_cosine > 0.999  # the export's parity, seen from the bench
    assert by_encoder and all({"ORT fp32", "ORT INT8"} <= runtimes for runtimes in by_encoder.values())


def test_tuning_variants_differ_from_the_repository_only_as_described(server, repository: Path, tmp_path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from mmserve.bench.inprocess import InProcessPipeline
    from mmserve.bench.tune import Variant, variant_repository

    def config(root: Path, model: str) -> model_config_pb2.ModelConfig:
        return text_format.Parse((root / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    pipeline = InProcessPipeline(repository, "text_embed")
    variant = Variant("v", "test", {"instances": 2, "threads": 1, "delay_us": 700}, preprocess={"instances": 3})
    copy = variant_repository(repository, pipeline, variant, tmp_path / "v", int8={})
    encoder, tokenizer = config(copy, "text_embed_encoder"), config(copy, "text_tokenize")
    assert encoder.instance_group[0].count == 2 and encoder.parameters["intra_op_threads"].string_value == "1"
    assert encoder.dynamic_batching.max_queue_delay_microseconds == 700
    assert tokenizer.instance_group[0].count == 3
    original = config(repository, "text_embed_encoder")
    encoder.ClearField("instance_group"), encoder.ClearField("dynamic_batching"), original.ClearField("instance_group")
    original.ClearField("dynamic_batching")
    del encoder.parameters["intra_op_threads"]
    original.parameters.pop("intra_op_threads", None)
    assert encoder == original
    weights = next((copy / "text_embed_encoder").glob("*/*.onnx"))
    assert weights.is_symlink()  # weights are linked, not copied


def test_the_bench_runs_the_served_version_not_the_newest_folder(text_checkpoints, tmp_path: Path):
    """After a rollback the newest version folders hold another label set: the in-process
    pipeline, the runtime table and the tuning sweep must use what the configs serve."""
    from mmserve.bench.inprocess import InProcessPipeline
    from mmserve.bench.tune import Variant, variant_repository
    from mmserve.exporters import versions
    from mmserve.exporters.text import export_text

    repo = tmp_path / "repo"
    for checkpoint in ("sentiment", "classify", "classify"):  # versions 1 (3 classes), 2 and 3 (4 classes)
        export_text(text_checkpoints[checkpoint], repo, name="shop", layout="ensemble")
    batch = inputs.stack(inputs.requests_for(Kind.TEXT_CLASSIFY, 2))

    versions.set_active_version(repo, "shop", 2)  # the encoder keeps 3 loaded beside 2: its config lists both
    assert versions.policy_versions(versions.read_config(repo / "shop_encoder" / "config.pbtxt")) == [2, 3]
    pipeline = InProcessPipeline(repo, "shop")
    assert pipeline.versions == {"text_tokenize": 1, "shop_encoder": 2, "shop_postprocess": 2}
    assert pipeline.onnx_path("shop_encoder") == repo.resolve() / "shop_encoder" / "2" / "model.onnx"

    versions.set_active_version(repo, "shop", 1)
    pipeline = InProcessPipeline(repo, "shop")
    assert pipeline.versions["shop_encoder"] == 1 and pipeline(batch)["PROBS"].shape == (2, 3)  # not version 3's 4
    quantized = tmp_path / "int8.onnx"
    quantized.write_bytes(b"stand-in: only where it is linked is checked")
    copy = variant_repository(repo, pipeline, Variant("q", "int8", {"int8": True}), tmp_path / "variant", {"shop_encoder": quantized})
    assert (copy / "shop_encoder" / "1" / "model.int8.onnx").is_symlink()
    assert not (copy / "shop_encoder" / "3" / "model.int8.onnx").exists()
    assert versions.read_config(copy / "shop_encoder" / "config.pbtxt").parameters["onnx_file"].string_value == "model.int8.onnx"



def test_a_fused_pipeline_runs_in_process_at_its_served_version(text_checkpoints, tmp_path: Path):
    """A fused pipeline's steps are read from the version its config serves, not the newest folder."""
    from mmserve.bench.inprocess import InProcessPipeline
    from mmserve.exporters import versions
    from mmserve.exporters.text import export_text

    repo = tmp_path / "repo"
    for checkpoint in ("sentiment", "classify"):  # versions 1 (3 classes) and 2 (4 classes)
        export_text(text_checkpoints[checkpoint], repo, name="shop", layout="fused")
    versions.set_active_version(repo, "shop", 1)
    pipeline = InProcessPipeline(repo, "shop")
    steps = repo.resolve() / "shop" / "1" / "steps"
    assert pipeline.layout == "fused" and pipeline.step_root == steps
    assert pipeline.onnx_path("shop_encoder") == steps / "shop_encoder" / "1" / "model.onnx"
    assert pipeline(inputs.stack(inputs.requests_for(Kind.TEXT_CLASSIFY, 2)))["PROBS"].shape == (2, 3)

# ---- two layouts side by side in one run ----
@pytest.fixture(scope="module")
def two_layouts(tiny_bert: Path, tmp_path_factory) -> tuple[Path, Path]:
    """text_embed alone, exported once as an ensemble of step models and once fused into one model."""
    from mmserve.exporters.text import export_text

    root = tmp_path_factory.mktemp("layouts")
    export_text(tiny_bert, root / "ensemble", layout="ensemble")
    export_text(tiny_bert, root / "fused", layout="fused")
    return root / "ensemble", root / "fused"


@pytest.fixture(scope="module")
def two_layout_run(two_layouts: tuple[Path, Path], tmp_path_factory) -> tuple[dict, Path, str, str]:
    """`mmserve bench --repository A --repository B --quick ... --report`, as a user runs it."""
    import contextlib

    from mmserve.bench.report import load_results
    from mmserve.cli import main

    out, docs = tmp_path_factory.mktemp("bench-layouts"), tmp_path_factory.mktemp("docs") / "benchmarks.md"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["bench", "text_embed", "--repository", str(two_layouts[0]), "--repository", str(two_layouts[1]),
                     "--quick", "--concurrency", "1,8", "--measurement-interval", "500", "--requests", "16",
                     "--skip-peers", "--skip-runtimes", "--out", str(out), "--report", "--docs", str(docs)])
    assert code == 0, printed.getvalue()
    return load_results(out), out, printed.getvalue(), docs.read_text()


def test_one_run_measures_each_layout_at_every_concurrency(two_layouts, two_layout_run):
    results, out, _, _ = two_layout_run
    ensemble, fused = two_layouts
    assert {label: (v["layout"], v["repository"]) for label, v in results["layouts"].items()} == {
        "ensemble": ("ensemble", str(ensemble.resolve())), "fused": ("fused", str(fused.resolve()))}
    rows = [r for r in results["perf"] if "error" not in r]
    assert sorted((r["layout"], r["load"]) for r in rows) == [("ensemble", 1), ("ensemble", 8), ("fused", 1), ("fused", 8)]
    for row in rows:
        assert row["pipeline"] == "text_embed" and row["throughput"] > 0 and 0 < row["p50_us"] <= row["p99_us"]
        if row["layout"] == "ensemble":  # Triton's statistics per step model
            assert {"text_tokenize", "text_embed_encoder"} <= set(row["steps"])
        else:  # one model: its own statistics are the only ones
            assert set(row["steps"]) == {"text_embed"} and row["steps"]["text_embed"]["avg_batch"] >= 1
        assert any(name not in ("perf_analyzer", "idle or other") for name in row["cpu"])
    assert list(results["layouts"]["fused"]["scheduling"]["text_embed"]) == ["text_embed"]
    assert "text_embed_encoder" in results["layouts"]["ensemble"]["scheduling"]["text_embed"]
    assert [t["batch"] for t in results["baselines"]["text_embed"]["timings"]][0] == 1  # measured once, for both
    with (out / "results.csv").open() as f:
        assert sorted({row["layout"] for row in csv.DictReader(f)}) == ["ensemble", "fused"]
    for repository in two_layouts:  # each server was stopped: nothing still serves either repository
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert str(repository.resolve()) not in cmdline.read_bytes().decode(errors="replace"), cmdline
            except OSError:
                continue


def test_the_in_process_baseline_reads_a_fused_repository_as_its_steps(two_layouts):
    """The fused layout's steps/ mini repository gives the same pipeline, the same files, the same answers."""
    from mmserve.bench.inprocess import InProcessPipeline

    ensemble, fused = (InProcessPipeline(repository, "text_embed") for repository in two_layouts)
    assert (ensemble.layout, fused.layout) == ("ensemble", "fused")
    assert [s.model_name for s in fused.steps] == [s.model_name for s in ensemble.steps]
    assert fused.onnx_path("text_embed_encoder").read_bytes() == ensemble.onnx_path("text_embed_encoder").read_bytes()
    assert fused.encoder_steps() == ensemble.encoder_steps() == ["text_embed_encoder"]
    batch = inputs.stack(inputs.requests_for(Kind.TEXT_EMBED, 3))
    np.testing.assert_allclose(fused(batch)["EMBEDDING"], ensemble(batch)["EMBEDDING"], atol=1e-6)


def test_report_and_terminal_judge_every_target_per_layout(two_layout_run):
    from mmserve.bench.report import efficiency, latency_met, target_reasons, throughput_met

    results, _, printed, text = two_layout_run
    for layout in ("ensemble", "fused"):
        assert f"text_embed ({layout}): p50 c=1" in printed
        assert f"`text_embed` {layout}: c=8 throughput" in text and f"`text_embed` {layout}: c=1 p50" in text
        eff = efficiency(results, "text_embed", layout)
        assert eff["throughput_ratio"] > 0 and eff["latency_ratio"] > 0
        missed = [kind for kind, met in (("c=8 throughput", throughput_met(eff)), ("c=1 p50", latency_met(eff)))
                  if not met]
        for kind in missed:  # each miss comes with its computed reason
            (reason,) = [line for line in target_reasons(results) if line.startswith(f"`text_embed` {layout}, {kind}")]
            assert ("formed batches of" if kind.startswith("c=8") else "serving adds") in reason
    faster = [line for line in printed.splitlines() if line.startswith("`text_embed`: **")]
    assert len(faster) == 1 and "faster on CPU" in faster[0]
    assert "## Layouts: which is faster on CPU" in text and faster[0] in text and " in 1 of 1 pipelines." in text
    assert "| layout | concurrency | infer/s |" in text and "| fused | 8 |" in text and "| ensemble | 1 |" in text


def test_results_from_before_layouts_still_render(two_layout_run):
    """A results.json of a one-repository run written before layouts were compared (no layout keys)."""
    import copy

    from test_bench_results_schema import validate_results

    from mmserve.bench.report import headlines, render

    results, *_ = two_layout_run
    old = copy.deepcopy(results)
    scheduling = old.pop("layouts")["ensemble"]["scheduling"]
    old["perf"] = [{k: v for k, v in r.items() if k != "layout"} for r in old["perf"] if r["layout"] == "ensemble"]
    for pipeline in old["pipelines"]:
        pipeline["scheduling"] = scheduling[pipeline["name"]]
    validate_results(old)  # the schema declares the pre-layouts shape too
    text = render(old, {})
    assert "## Layouts" not in text and "| concurrency | infer/s |" in text and "`text_embed_encoder` 1×" in text
    assert [line.split(":")[0] for line in headlines(old)] == ["text_embed"]


def test_a_repository_of_mixed_or_unknown_layout_is_refused_before_any_server_starts(two_layouts, tmp_path, capsys):
    import shutil

    from mmserve.cli import main

    ensemble, fused = two_layouts
    mixed = tmp_path / "mixed"
    shutil.copytree(ensemble, mixed, symlinks=True)
    shutil.copytree(fused / "text_embed", mixed / "text_embed_fused", symlinks=True)
    (tmp_path / "empty").mkdir()
    for repository, message in ((mixed, "mixes layouts"), (tmp_path / "empty", "no pipeline of a known layout")):
        code = main(["bench", "--repository", str(ensemble), "--repository", str(repository), "--skip-peers",
                     "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and str(repository) in err
        assert not (tmp_path / "out" / "triton.ensemble.log").exists()  # refused before the first server
