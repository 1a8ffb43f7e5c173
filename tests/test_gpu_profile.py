"""The gpu profile's options on this CPU machine: --fp16 (converted and compared here),
--tensorrt (its optimisation profiles and its tensorrt_plan config; the engine itself needs
TensorRT and a GPU: scripts/gpu_check.sh), the refusals that come before any slow work, and
every gpu-profile config parsed by Triton's own protobuf and checked against its ONNX graph."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mmserve.exporters.fp16 import FP16_FILE, convert_fp16, fp16_report, fp32_graph
from mmserve.exporters.onnx_export import ExportError, OnnxSpec, export_onnx
from mmserve.exporters.gpu_stack import deployed_image
from mmserve.exporters.tensorrt import (
    GpuOptionError,
    TensorRtUnavailable,
    check_gpu_options,
    check_tensorrt_version,
    export_profile,
    graph_is_fp16,
    onnx_input_axes,
)
from mmserve.exporters.triton_config import (
    ORT_TRT_CACHE,
    PLAN_FILE,
    TENSORRT_PLAN,
    EncoderTuning,
    encoder_config,
    onnx_tensors,
)
from mmserve.pipelines import MAX_BATCH_SIZE

try:
    import tensorrt  # noqa: F401

    HAS_TENSORRT = True
except ImportError:
    HAS_TENSORRT = False

# ONNX element types -> the config's spelling, for checking configs against graphs.
_ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32,
    onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16,
    onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64,
    onnx.TensorProto.INT32: model_config_pb2.TYPE_INT32,
    onnx.TensorProto.BOOL: model_config_pb2.TYPE_BOOL,
}


class TinyEncoder(torch.nn.Module):
    """Token ids and mask -> a pooled, normalised embedding: the ops of a real text encoder
    (embedding, attention, layer norm, GELU) with a dynamic batch and sequence axis."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(100, 32)
        self.query, self.key, self.value = (torch.nn.Linear(32, 32) for _ in range(3))
        self.feed_forward = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
        self.norm = torch.nn.LayerNorm(32)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(input_ids)
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        scores = self.query(tokens) @ self.key(tokens).transpose(1, 2) / 32**0.5
        scores = scores + (1.0 - mask.transpose(1, 2)) * -1e4  # padding is attended by no token
        hidden = self.norm(tokens + self.feed_forward(scores.softmax(-1) @ self.value(tokens)))
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


TOKENS = OnnxSpec(
    ("input_ids", "attention_mask"), ("embedding",),
    {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}},
)


def _token_feeds(batch: int, length: int, count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(length)
    return [{"input_ids": rng.integers(1, 100, (batch, length)), "attention_mask": np.ones((batch, length), np.int64)}
            for _ in range(count)]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    feed = _token_feeds(2, 7, 1)[0]
    example = tuple(torch.from_numpy(feed[n]) for n in TOKENS.input_names)
    return export_onnx(TinyEncoder().eval(), example, TOKENS, tmp_path_factory.mktemp("tiny") / "model.onnx")


# ---- --fp16 -----------------------------------------------------------------------------------


def test_fp16_conversion_keeps_the_contract_types_and_reports_parity(tiny_onnx: Path):
    half = convert_fp16(tiny_onnx)
    assert half == tiny_onnx.with_name(FP16_FILE)
    graph = onnx.load(str(half))
    weights = {onnx.TensorProto.DataType.Name(i.data_type) for i in graph.graph.initializer if i.dims and len(i.dims) > 1}
    assert weights == {"FLOAT16"}, weights  # the matrices are half precision...
    io_types = {v.name: v.type.tensor_type.elem_type for v in (*graph.graph.input, *graph.graph.output)}
    assert io_types == {"input_ids": onnx.TensorProto.INT64, "attention_mask": onnx.TensorProto.INT64,
                        "embedding": onnx.TensorProto.FLOAT}  # ...the tensors clients send and get are not
    assert onnx_tensors(half) == onnx_tensors(tiny_onnx)  # the same config either way
    weight_bytes = [sum(len(i.raw_data) for i in onnx.load(str(p)).graph.initializer) for p in (tiny_onnx, half)]
    assert weight_bytes[1] < 0.55 * weight_bytes[0]  # half the bytes (small int64 constants stay)

    # Computed on this machine: onnxruntime CPU runs the FP16 graph at ORT_ENABLE_BASIC in a child process.
    report = fp16_report(tiny_onnx, half, _token_feeds(3, 9) + _token_feeds(1, 4), "embedding")
    assert report.skipped is None, report.skipped
    assert report.samples == 3 * 3 + 3 * 1
    assert 0 < report.max_abs_diff < 1e-2  # FP16 rounding is there, and small
    assert 0.999 < report.min_cosine <= report.mean_cosine <= 1.0 + 1e-9
    assert "cosine to fp32 min" in str(report)


def test_fp16_parity_that_cannot_run_says_why(tiny_onnx: Path, tmp_path: Path):
    """A graph onnxruntime refuses is reported with the reason, not raised: the export goes on."""
    half = convert_fp16(tiny_onnx, tmp_path / FP16_FILE)
    report = fp16_report(tiny_onnx, half, [{"input_ids": np.ones((1, 3), np.int64)}], "embedding")  # no mask
    assert report.max_abs_diff is None and report.min_cosine is None
    assert report.skipped and "onnxruntime CPU cannot run the FP16 graph" in report.skipped
    assert str(report).startswith("parity not computed (")


# ---- what is refused before any slow work -----------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"profile": "cpu", "tensorrt": True}, "add --profile gpu"),
        ({"profile": "cpu", "fp16": True}, "--fp16 is for --profile gpu"),
        ({"profile": "gpu", "int8": True, "fp16": True}, "give one of them"),
        ({"profile": "gpu", "int8": True, "tensorrt": True}, "give one of them"),
    ],
)
def test_gpu_options_where_they_cannot_apply_are_usage_errors(options, message):
    with pytest.raises(GpuOptionError, match=message):
        check_gpu_options(**options)


def _mmserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmserve.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("line", ["text", "clip", "speech"])
def test_tensorrt_without_the_gpu_profile_stops_before_the_checkpoint_is_read(line: str, tmp_path: Path):
    repository = tmp_path / "repo"
    result = _mmserve("export", line, str(tmp_path / "no-such-checkpoint"), "--repository", str(repository), "--tensorrt")
    assert result.returncode == 2
    assert "--tensorrt writes tensorrt_plan models" in result.stderr and "add --profile gpu" in result.stderr
    assert "Traceback" not in result.stderr and not repository.exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is importable here: the missing-module message cannot be seen")
def test_tensorrt_without_the_module_says_what_to_install_before_any_export(tmp_path: Path):
    repository = tmp_path / "repo"
    result = _mmserve("export", "text", str(tmp_path / "no-such-checkpoint"), "--repository", str(repository),
                      "--profile", "gpu", "--tensorrt")
    assert result.returncode == 2
    assert "tensorrt module is not importable" in result.stderr
    # what to install (the deployed image's TensorRT, pinned), and where else to run
    assert f"pip install '{deployed_image().tensorrt_requirement}'" in result.stderr and "docker/Dockerfile" in result.stderr
    assert "no-such-checkpoint" not in result.stderr  # it stopped before looking at the checkpoint
    assert not repository.exists()


# ---- --tensorrt: the profile and the config (the engine needs a GPU) --------------------------


def test_the_engine_profile_spans_every_batch_and_length_the_pipeline_sends(tiny_onnx: Path):
    assert onnx_input_axes(tiny_onnx) == {"input_ids": ("batch", "sequence"), "attention_mask": ("batch", "sequence")}
    feeds = _token_feeds(4, 9) + _token_feeds(4, 23)
    profile = export_profile(tiny_onnx, {"sequence": 128}, feeds)
    for name in ("input_ids", "attention_mask"):
        low, opt, high = profile[name]
        assert low == (1, 1) and high == (MAX_BATCH_SIZE, 128)
        assert opt[1] == 23 and 1 <= opt[0] <= MAX_BATCH_SIZE  # tuned for the longest real input
    with pytest.raises(ExportError, match="'sequence'.*states no limit"):
        export_profile(tiny_onnx, {}, feeds)


def test_a_waveform_axis_starts_at_the_products_shortest_input(tiny_onnx: Path):
    """Defect 9: an axis whose limit is a pair spans smallest..largest, not 1..largest (a waveform
    encoder's pre-processing pads every clip to min_samples; 1 sample gives no output)."""
    feeds = _token_feeds(2, 9)
    profile = export_profile(tiny_onnx, {"sequence": (400, 16000)}, feeds)
    low, opt, high = profile["input_ids"]
    assert (low[1], high[1]) == (400, 16000) and opt[1] == 400  # shorter feeds: tuned at the minimum
    with pytest.raises(ExportError, match="need 1 <= smallest <= largest"):
        export_profile(tiny_onnx, {"sequence": (0, 10)}, feeds)


def test_fixed_axes_stay_fixed_in_the_engine_profile(tmp_path: Path):
    spec = OnnxSpec(("pixels",), ("embedding",), {"pixels": {0: "batch"}, "embedding": {0: "batch"}})
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    path = export_onnx(module, (torch.ones(2, 3, 8, 8),), spec, tmp_path / "model.onnx")
    assert export_profile(path, {})["pixels"] == ((1, 3, 8, 8), (16, 3, 8, 8), (MAX_BATCH_SIZE, 3, 8, 8))


def test_an_engine_that_retypes_the_token_ids_is_refused(tiny_onnx: Path):
    """Defect 11: a TensorRT older than 10 takes int32 ids where the tokenizer step emits int64;
    such an engine cannot load beside it, so it is refused with the reason, and so is that TensorRT."""
    engine_types = {"input_ids": "TYPE_INT32", "attention_mask": "TYPE_INT32", "embedding": "TYPE_FP32"}
    with pytest.raises(ExportError, match=r"input_ids TYPE_INT64 -> TYPE_INT32.*TensorRT 10 or later"):
        encoder_config("enc", tiny_onnx, "gpu", engine_types=engine_types)
    with pytest.raises(TensorRtUnavailable, match=r"TensorRT 8\.6\.1 takes int32 token ids.*pip install 'tensorrt-cu"):
        check_tensorrt_version("8.6.1")
    check_tensorrt_version("10.13.2.6")
    check_tensorrt_version("11.4.0.106")


def test_a_tensorrt_plan_config_states_what_the_engine_takes(tiny_onnx: Path):
    engine_types = {"input_ids": "TYPE_INT64", "attention_mask": "TYPE_INT64", "embedding": "TYPE_FP32"}
    config = encoder_config("enc", tiny_onnx, "gpu", tuning=EncoderTuning(instances=2), engine_types=engine_types)
    parsed = text_format.Parse(text_format.MessageToString(config), model_config_pb2.ModelConfig())
    assert parsed.platform == TENSORRT_PLAN and parsed.default_model_filename == PLAN_FILE
    assert not parsed.backend and not parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert [(g.kind, g.count) for g in parsed.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert parsed.max_batch_size == MAX_BATCH_SIZE and parsed.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(i.name, i.data_type, list(i.dims)) for i in parsed.input] == [
        ("input_ids", model_config_pb2.TYPE_INT64, [-1]), ("attention_mask", model_config_pb2.TYPE_INT64, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in parsed.output] == [("embedding", model_config_pb2.TYPE_FP32, [32])]
    with pytest.raises(ValueError, match="gpu profile only"):
        encoder_config("enc", tiny_onnx, "cpu", engine_types=engine_types)


# ---- a real product line with --profile gpu --fp16: every config against its graph ------------


def check_against_graph(config: model_config_pb2.ModelConfig, graph_path: Path) -> None:
    """A Triton config states the graph's tensors: same names, types and per-item dims."""
    graph = onnx.load(str(graph_path)).graph
    initializers = {i.name for i in graph.initializer}
    for stated, values in ((config.input, [v for v in graph.input if v.name not in initializers]), (config.output, graph.output)):
        assert [t.name for t in stated] == [v.name for v in values], graph_path
        for tensor, value in zip(stated, values):
            assert tensor.data_type == _ONNX_TO_TRITON[value.type.tensor_type.elem_type], (graph_path, tensor.name)
            dims = value.type.tensor_type.shape.dim
            assert not dims[0].HasField("dim_value"), f"{tensor.name}: the batch axis must be dynamic"
            assert len(tensor.dims) == len(dims) - 1, (graph_path, tensor.name)
            for stated_size, dim in zip(tensor.dims, dims[1:]):
                if dim.HasField("dim_value"):
                    assert stated_size == dim.dim_value, (graph_path, tensor.name)
                else:  # symbolic in the file: dynamic, or the size onnxruntime resolved
                    assert stated_size == -1 or stated_size > 0


@pytest.fixture(scope="module")
def gpu_fp16_text(tiny_bert: Path, tmp_path_factory) -> tuple[Path, str]:
    repository = tmp_path_factory.mktemp("gpu-fp16") / "repo"
    result = _mmserve("export", "text", str(tiny_bert), "--repository", str(repository), "--profile", "gpu", "--fp16")
    assert result.returncode == 0, result.stdout + result.stderr
    return repository, result.stdout


def test_an_fp16_gpu_export_serves_the_fp16_graph_with_configs_that_match_it(gpu_fp16_text):
    repository, summary = gpu_fp16_text
    encoder = text_format.Parse((repository / "text_embed_encoder" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert encoder.backend == "onnxruntime" and encoder.default_model_filename == FP16_FILE
    assert [g.kind for g in encoder.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    (served,) = (repository / "text_embed_encoder").glob(f"[0-9]*/{FP16_FILE}")
    check_against_graph(encoder, served)
    assert {i.data_type for i in onnx.load(str(served)).graph.initializer} >= {onnx.TensorProto.FLOAT16}

    ensemble = text_format.Parse((repository / "text_embed" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert ensemble.platform == "ensemble"
    step = next(s for s in ensemble.ensemble_scheduling.step if s.model_name == "text_embed_encoder")
    assert set(step.input_map) == {i.name for i in encoder.input}  # the ensemble feeds what the graph takes
    assert set(step.output_map) <= {o.name for o in encoder.output}

    # The export summary and the product card carry the FP16 figures, computed here.
    assert "encoder fp16: max |fp16 - fp32| = " in summary
    (card_path,) = (repository / "text_embed").glob("[0-9]*/card.json")
    fp16 = json.loads(card_path.read_text())["fp16"]["encoder"]
    assert fp16["skipped"] is None and 0.99 < fp16["min_cosine"] <= 1.0 + 1e-9 and fp16["max_abs_diff"] < 0.05
    assert fp16["fp16_bytes"] < fp16["fp32_bytes"]


def test_the_gpu_encoder_takes_a_tensorrt_profile_from_the_products_limits_and_a_cache_path(gpu_fp16_text):
    """Defect 8: onnxruntime's TensorRT provider gets trt_profile_min/opt/max_shapes (batch 1..max_batch_size,
    tokens 1..the tokenizer's max_length) and a named engine cache folder, so no request waits for a rebuild."""
    repository, _ = gpu_fp16_text
    encoder = text_format.Parse((repository / "text_embed_encoder" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    parameters = dict(accelerator.parameters)
    assert parameters["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert parameters["trt_profile_max_shapes"] == f"input_ids:{MAX_BATCH_SIZE}x256,attention_mask:{MAX_BATCH_SIZE}x256"
    opt = dict(part.split(":") for part in parameters["trt_profile_opt_shapes"].split(","))
    assert set(opt) == {"input_ids", "attention_mask"} and opt["input_ids"].startswith("16x")
    assert parameters["trt_engine_cache_enable"] == "true" and parameters["trt_engine_cache_path"] == ORT_TRT_CACHE


def test_gpu_text_requests_are_padded_to_length_buckets(gpu_fp16_text, tiny_bert: Path):
    """Defect 12: on the gpu profile the tokenizer pads to multiples of 16 tokens, so requests of
    similar length share a shape and Triton's batcher merges them; the cpu profile pads nothing."""
    from mmserve.serving.text import TextTokenizer

    repository, _ = gpu_fp16_text
    tokenize = text_format.Parse((repository / "text_tokenize" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert tokenize.parameters["length_bucket"].string_value == "16"
    texts = ["short", "a somewhat longer sentence with more words in it than the first"]
    bucketed = TextTokenizer(tiny_bert / "tokenizer.json", max_length=256, length_bucket=16)
    plain = TextTokenizer(tiny_bert / "tokenizer.json", max_length=256)
    lengths = {bucketed([t]).input_ids.shape[1] for t in texts}
    assert lengths == {16}  # both texts: one shape
    assert len({plain([t]).input_ids.shape[1] for t in texts}) == 2
    batch = bucketed([texts[0]])
    assert batch.attention_mask.sum() == plain([texts[0]]).attention_mask.sum()  # padding is masked out


def test_the_fp32_graph_of_an_fp16_one(tiny_onnx: Path, tmp_path: Path):
    """Defect 7: what runs on onnxruntime's CPU provider (zero_shot_classify's text tower) gets the FP32 graph."""
    half = convert_fp16(tiny_onnx, tmp_path / FP16_FILE)
    assert fp32_graph(half) == half  # no FP32 graph beside it: itself
    (tmp_path / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    assert fp32_graph(half) == tmp_path / "model.onnx"
    assert fp32_graph(tiny_onnx) == tiny_onnx


def test_zero_shot_keeps_the_fp32_text_tower_on_an_fp16_gpu_export(workdir: Path, tmp_path: Path):
    """Defect 7: zero_shot_classify runs its text tower (the label cache) on onnxruntime's CPU
    provider at ORT_ENABLE_ALL, where FP16 graphs crashed: it gets the FP32 graph, while the
    clip_text_embed encoder serves the FP16 one on the GPU."""
    from lines_clip import tiny_clip_checkpoint

    from mmserve.exporters.clip import export_clip

    repository = tmp_path / "repo"
    export_clip(tiny_clip_checkpoint(workdir), repository, profile="gpu", fp16=True)
    classify = text_format.Parse((repository / "zero_shot_classify" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    onnx_file = classify.parameters["onnx_file"].string_value
    (graph,) = (repository / "zero_shot_classify").glob(f"[0-9]*/{onnx_file}")
    assert onnx_file == "model.onnx" and not graph_is_fp16(graph)
    encoder = text_format.Parse((repository / "clip_text_encoder" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert encoder.default_model_filename == FP16_FILE


def test_a_waveform_encoders_shape_profile_starts_at_its_shortest_input(tmp_path: Path):
    """Defect 9 end to end: a Wav2Vec2 encoder's TensorRT profile starts at the min_samples its
    pre-processing pads every clip to (its convolutional front end gives nothing from 1 sample)."""
    from mmserve.exporters.speech import export_speech
    from mmserve.training.speech_tiny import make_tiny_wav2vec2

    from transformers import Wav2Vec2Config, Wav2Vec2Model

    base = make_tiny_wav2vec2(tmp_path / "tiny-wav2vec2")
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config.from_pretrained(base)).save_pretrained(base)  # random weights: shapes are what count
    repository = tmp_path / "repo"
    export_speech(base, repository, task="embed", max_seconds=2.0, profile="gpu")
    configs = {p.parent.name: text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
               for p in repository.glob("*/config.pbtxt")}
    (preprocess,) = [c for c in configs.values() if "min_samples" in c.parameters]
    min_samples = int(preprocess.parameters["min_samples"].string_value)
    assert min_samples > 1
    (encoder,) = [c for c in configs.values() if c.backend == "onnxruntime"]
    (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    shapes = dict(item.split(":") for item in accelerator.parameters["trt_profile_min_shapes"].split(","))
    assert all(shape == f"1x{min_samples}" for shape in shapes.values()), shapes
    maxima = dict(item.split(":") for item in accelerator.parameters["trt_profile_max_shapes"].split(","))
    assert all(shape == f"{MAX_BATCH_SIZE}x{int(2.0 * 16000)}" for shape in maxima.values()), maxima
