"""The mechanisms behind real-size serving (issue 23), on tiny graphs in seconds:

- one copy of an encoder's weights per machine: onnxruntime's prepared copy (optimised,
  prepacked weights in an external file) is memory-mapped, so a second process shares the
  first one's pages; same answers as the plain file; an unsafe or broken cache falls back;
- one copy on disk: pipelines carrying the same encoder file hold hard links to one file;
- a pipeline whose encoder is real-size runs one instance with every core.

The real-size figures themselves: tests/test_real_size_serving.py (MMSERVE_SLOW=1) and
`mmserve bench --real-size`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

WIDTH = 1024  # a 4 MiB weight: big enough to see in /proc/PID/smaps, quick to prepare


def _graph(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).standard_normal((WIDTH, WIDTH)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _answer(onnx_path: Path) -> np.ndarray:
    from mmserve.serving.runtime import OnnxRunner, RunnerSettings

    runner = OnnxRunner(onnx_path, RunnerSettings(intra_op_threads=1))
    x = np.random.default_rng(1).standard_normal((3, WIDTH)).astype(np.float32)
    return runner.run([{"x": x}])[0]["y"]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "ort-cache"
    monkeypatch.setenv("MMSERVE_ORT_CACHE", str(folder))
    return folder


def test_an_encoder_loads_from_its_prepared_copy_with_the_same_answers(tmp_path: Path, cache: Path, monkeypatch):
    from mmserve.serving.shared_weights import DONE_FILE, PREPARED_DATA, prepared_model

    model = _graph(tmp_path / "a" / "model.onnx")
    shared = _answer(model)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert (entry / DONE_FILE).is_file() and (entry / PREPARED_DATA).stat().st_size >= WIDTH * WIDTH * 4
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    # the same bytes elsewhere (another pipeline's copy) use the same entry; other weights another
    assert prepared_model(_graph(tmp_path / "b" / "model.onnx")) == entry / "model.onnx"
    assert prepared_model(_graph(tmp_path / "c" / "model.onnx", seed=2)).parent != entry
    monkeypatch.setenv("MMSERVE_ORT_CACHE", "off")
    assert prepared_model(model) is None
    np.testing.assert_array_equal(shared, _answer(model))


def test_a_second_process_shares_the_first_ones_weight_pages(tmp_path: Path, cache: Path):
    model = _graph(tmp_path / "model.onnx")
    held = _answer(model)  # this process maps the prepared weights and has touched them
    from mmserve.serving.runtime import OnnxRunner, RunnerSettings

    runner = OnnxRunner(model, RunnerSettings(intra_op_threads=1))
    runner.run([{"x": np.ones((1, WIDTH), np.float32)}])
    child = textwrap.dedent(f"""
        import json, numpy as np
        from pathlib import Path
        from mmserve.serving.runtime import OnnxRunner, RunnerSettings
        runner = OnnxRunner(Path({str(model)!r}), RunnerSettings(intra_op_threads=1))
        runner.run([{{"x": np.ones((1, {WIDTH}), np.float32)}}])
        rss = pss = 0
        inside = False
        for line in open("/proc/self/smaps"):
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                inside = fields[-1].endswith("model.data")
            elif inside and fields[0] == "Rss:":
                rss += int(fields[1])
            elif inside and fields[0] == "Pss:":
                pss += int(fields[1])
        print(json.dumps({{"rss_kib": rss, "pss_kib": pss}}))
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MMSERVE_ORT_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    pages = json.loads(done.stdout.strip().splitlines()[-1])
    # the (prepacked) weight is mapped from the prepared file, and half of it is counted here:
    # the other half is this process's, which maps the same pages
    assert pages["rss_kib"] >= WIDTH * WIDTH * 4 // 1024, (pages, done.stderr)
    assert pages["pss_kib"] <= pages["rss_kib"] * 0.6, (pages, done.stderr)
    assert held.shape == (3, WIDTH) and runner is not None


def test_an_unsafe_or_broken_cache_falls_back_to_the_plain_file(tmp_path: Path, cache: Path, capfd):
    from mmserve.serving.shared_weights import PREPARED_DATA, prepared_model

    model = _graph(tmp_path / "model.onnx")
    expected = _answer(model)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    (entry / PREPARED_DATA).write_bytes(b"")  # truncated weights: onnxruntime refuses the copy
    np.testing.assert_array_equal(_answer(model), expected)
    assert "without shared weights" in capfd.readouterr().err
    cache.chmod(0o777)  # another user could plant a model there: never used
    assert prepared_model(model) is None
    assert "must be owned by this user and not writable by others" in capfd.readouterr().err
    cache.chmod(0o700)


def test_pipelines_carrying_one_encoder_hold_one_file_on_disk(tmp_path: Path):
    from mmserve.exporters.repository import ModelFolder
    from mmserve.exporters.triton_config import ModelConfig

    onnx_file = _graph(tmp_path / "export" / "model.onnx")
    for name in ("image_embed", "zero_shot_image"):
        model = ModelFolder(name, ModelConfig(name=name), {"1/steps/enc/1/model.onnx": onnx_file, "1/x.txt": name})
        model.write_version(tmp_path / "repo" / name / "1", model.config)
    first, second = (tmp_path / "repo" / n / "1" / "steps" / "enc" / "1" / "model.onnx" for n in ("image_embed", "zero_shot_image"))
    assert first.stat().st_ino == second.stat().st_ino and first.stat().st_nlink == 2
    assert first.read_bytes() == onnx_file.read_bytes()


def test_a_real_size_encoder_makes_its_pipeline_one_instance_with_every_core(tmp_path: Path, monkeypatch):
    from mmserve.exporters import fused
    from mmserve.exporters.repository import ENCODER_MODEL_PY, PYTHON_MODELS, ModelFolder
    from mmserve.exporters.triton_config import DECODER_INSTANCES, EncoderTuning, Tensor, python_model_config

    onnx_file = _graph(tmp_path / "model.onnx")
    encoder = ModelFolder("enc", python_model_config("enc", [Tensor("x", "TYPE_FP32", (WIDTH,))],
                                                     [Tensor("y", "TYPE_FP32", (WIDTH,))], {"onnx_file": "model.onnx"}),
                          {"1/model.py": ENCODER_MODEL_PY, "1/model.onnx": onnx_file})
    decoder = ModelFolder("image_preprocess", python_model_config("image_preprocess", [], [], instances=DECODER_INSTANCES),
                          {"1/model.py": PYTHON_MODELS["image_preprocess"]})
    measured = fused.encoder_ms(encoder)
    assert measured is not None and measured > 0
    monkeypatch.setattr(fused, "LARGE_ENCODER_MS", float("inf"))  # a small encoder: the decoder's instances
    assert fused.fused_instances([decoder, encoder], EncoderTuning()) == DECODER_INSTANCES
    monkeypatch.setattr(fused, "LARGE_ENCODER_MS", 0.0)  # a real-size one: one instance, every core
    assert fused.fused_instances([decoder, encoder], EncoderTuning()) == 1
    assert fused.fused_instances([decoder, encoder], EncoderTuning(instances=3)) == 3  # asked for: kept


def _results(ratio: float) -> dict:
    """What `mmserve bench --real-size` records, for three pipelines served at `ratio` x in-process."""
    from mmserve.bench.realsize import MEASURED

    results: dict = {"command": "mmserve bench --real-size", "started": "s", "finished": "f", "machine": {"logical_cpus": 2},
                     "loadavg_start": [1.0, 1.0, 1.0], "loadavg_after_baselines": [2.0, 2.0, 2.0], "loadavg_end": [1.5, 1.5, 1.5],
                     "export_seconds": {"clip": 30.0}, "weights_mib": 100.0, "onnx_on_disk": {"paths": 5, "files": 3},
                     "inputs": {}, "baselines": {}, "perf": [], "scheduling": {},
                     "memory": {"shared": {"rss_mib": 400.0, "pss_mib": 300.0, "weights_pss_mib": 95.0, "processes": 4,
                                           "pss_by_process_mib": {"image_embed": 150.0}},
                                "not shared": {"rss_mib": 900.0, "pss_mib": 800.0, "weights_pss_mib": 0.0, "processes": 4}}}
    for name, _ in MEASURED:
        results["inputs"][name] = "inputs"
        results["baselines"][name] = {"timings": [{"batch": 1, "throughput": 10.0, "p50_ms": 100.0},
                                                  {"batch": 8, "throughput": 20.0, "p50_ms": 400.0}]}
        results["perf"] += [{"pipeline": name, "load": 1, "p50_us": 100e3 * ratio, "throughput": 10.0},
                            {"pipeline": name, "load": 8, "p50_us": 400e3, "throughput": 20.0 / ratio,
                             "steps": {name: {"avg_batch": 6.0}}}]
    return results


def test_the_real_size_report_states_each_target_and_replaces_only_its_own_section(tmp_path: Path):
    from mmserve.bench.realsize import kept_section, render, verdicts, write_section

    good, slow = _results(1.1), _results(1.6)
    for results in (good, slow):
        results["verdicts"] = verdicts(results)
    assert all(v["met"] for v in good["verdicts"])
    assert [v["met"] for v in slow["verdicts"]] == [False, False] * 3 + [True]
    memory = good["verdicts"][-1]
    assert memory["pipeline"] == "server" and memory["weights_pss_mib"] == 95.0
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nsmall-model figures\n", encoding="utf-8")
    write_section(docs, render(good))
    write_section(docs, render(slow))  # a second run replaces the first
    text = docs.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nsmall-model figures\n") and text.count("## Real-size models") == 1
    assert "**1.60×**" in text and "**not met**" in text and "(batches of 6.0)" in text and "1.10×" not in text
    assert kept_section(docs).strip() == text[text.index("<!-- real-size"):].strip()


def test_clip_training_gives_a_real_size_model_every_core():
    import torch

    from mmserve.training.clip_threads import LARGE_MODEL_PARAMETERS, configure_threads
    from mmserve.training.loop import available_cores as _cores

    before = torch.get_num_threads()
    try:
        assert configure_threads(workers=1, parameters=LARGE_MODEL_PARAMETERS) == _cores()  # ViT-B-32: 151M
        assert configure_threads(workers=1, parameters=3_600_000) == max(1, _cores() - 1)  # the tiny ViT: one per loader
    finally:
        torch.set_num_threads(before)


def test_a_real_size_clip_model_takes_the_thread_count_that_runs_faster_here():
    import open_clip
    import torch

    from mmserve.training.clip import TINY_ARCH, resolve_arch
    from mmserve.training.clip_threads import threads_by_trial
    from mmserve.training.loop import available_cores as _cores

    name, _ = resolve_arch(TINY_ARCH)
    model = open_clip.create_model(name).train()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(_cores())
        chosen = threads_by_trial(model, open_clip.get_tokenizer(name), workers=1)
        assert chosen in {_cores(), max(1, _cores() - 1)} and torch.get_num_threads() == chosen
        assert model.training and all(p.grad is None for p in model.parameters())  # training state untouched
    finally:
        torch.set_num_threads(before)
