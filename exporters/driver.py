"""The one export sequence every product line runs: torch graphs -> ONNX -> parity gate ->
INT8 (with --int8) or, on the gpu profile, FP16 (--fp16, exporters/fp16.py) and a TensorRT
engine (--tensorrt, exporters/tensorrt.py) -> the line's repository models -> a new product
version, written atomically.

A product line (exporters/text.py, speech.py, clip.py) loads its checkpoint and describes
its export as a `Product`: the graphs it serves, wrapped as served, with real inputs for the
parity gate, and a function that turns the exported ONNX files into the repository's models
(pre-processing, encoders, post-processing, ensembles). Everything else happens here, so
every line gets the same gate, the same INT8 report, the same product card and the same
atomic write. docs/adding-a-product-line.md walks through adding a line.
"""
from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypedDict

import numpy as np

from mmserve.exporters.fused import FUSED, check_layout, default_layout, fuse_pipelines
from mmserve.exporters.fp16 import Fp16Report, convert_fp16, fp16_report
from mmserve.exporters.onnx_export import OnnxSpec, ParityReport, check_parity, export_onnx, require_parity
from mmserve.exporters.quantize import QuantizationReport, quantize_int8
from mmserve.exporters.repository import ModelFolder, write_models
from mmserve.exporters.staging import ensure_writable
from mmserve.exporters.tensorrt import PLAN_FILE, check_gpu_options, export_profile
from mmserve.exporters.triton_config import EncoderTuning, onnx_tensors
from mmserve.exporters.versions import DEFAULT_KEEP, Release
from mmserve.pipelines import Kind
from mmserve.repository_layout import ONNX_FILE

Feeds = dict[str, np.ndarray]  # one batch of a graph's inputs, by input name
DevSet = tuple[Sequence[Feeds], Sequence[int]]  # a classifier's dev inputs and gold class indices


class ExportOptions(TypedDict, total=False):
    """What every product line's export takes besides its own settings (`export_product`'s
    defaults): `--int8`, `--profile cpu|gpu`, `--layout fused|ensemble`, the encoders'
    scheduling, `--keep N`; on the gpu profile `--fp16` and `--tensorrt`."""

    int8: bool
    fp16: bool
    tensorrt: bool
    profile: str
    layout: str | None
    tuning: EncoderTuning
    keep: int


@dataclass(frozen=True)
class Graph:
    """One torch module a product serves as an ONNX graph."""

    name: str  # "encoder", "image_tower", ...: the key of its figures on the product card
    module: Any  # a torch.nn.Module in eval mode, wrapped exactly as served (the line's serving_graphs)
    spec: OnnxSpec
    parity_feeds: Sequence[Feeds]  # real inputs in batches: the parity gate's, and INT8's comparison
    # A classifier's dev split, read only with --int8, to report what INT8 costs in accuracy.
    dev_set: Callable[[], DevSet | None] | None = None
    # The largest size of each dynamic axis but the batch, by axis name (e.g. {"sequence":
    # max_length}): the upper bound of a TensorRT engine's optimisation profile (--tensorrt).
    # A pair (smallest, largest) where the pre-processing never sends fewer (a waveform's min_samples).
    axis_limits: Mapping[str, int | tuple[int, int]] | None = None

    @property
    def output(self) -> str:
        """The output the gates compare (the graph's first)."""
        return self.spec.output_names[0]

    @property
    def title(self) -> str:
        return self.name.replace("_", " ")


@dataclass(frozen=True)
class Product:
    """What one export of a product line writes; `export_product` does the rest."""

    checkpoint: Path
    kinds: Mapping[str, Kind]  # each pipeline (ensemble) written -> its kind; the first names the product
    description: str  # what the summary calls it: the task, the model family
    graphs: Sequence[Graph]
    # (repository, each graph's ONNX file by graph name, profile, tuning) -> every model of the export
    models: Callable[[Path, Mapping[str, Path], str, EncoderTuning], list[ModelFolder]]
    details: Sequence[str] = ()  # the line's own facts for the summary


@dataclass(frozen=True)
class GraphExport:
    """What became of one graph."""

    parity: ParityReport
    quantization: QuantizationReport | None  # with --int8: drift (and accuracy) against fp32
    onnx_bytes: int  # the file served (the INT8 one with --int8)
    output_dims: tuple[int, ...]  # per item, as the repository's config states them
    fp16: Fp16Report | None = None  # with --fp16: FP16 against FP32 on the parity feeds
    engine: dict | None = None  # with --tensorrt: the engine's record (tensorrt.engine_record: profile, built by, parity)


@dataclass(frozen=True)
class ExportResult:
    """What one export did, for every product line."""

    pipelines: tuple[str, ...]
    description: str
    models: tuple[str, ...]  # every model written or reused, in the export's order
    graphs: Mapping[str, GraphExport]
    seconds: float
    version: int | None  # the product version written (exporters/versions.py)
    details: tuple[str, ...] = ()

    @property
    def pipeline(self) -> str:
        """The product: its first pipeline (`mmserve reload` takes it; the others follow)."""
        return self.pipelines[0]

    def summary(self) -> str:
        plural = "s" if len(self.pipelines) > 1 else ""
        lines = [
            f"pipeline{plural} {', '.join(self.pipelines)} ({self.description}) version {self.version}",
            f"  models: {', '.join(self.models)}",
        ]
        for name, graph in self.graphs.items():
            title = name.replace("_", " ")
            lines.append(f"  {title} parity fp32: {graph.parity}")
            if graph.quantization:
                lines.append(f"  {title} int8: {graph.quantization}")
            if graph.fp16:
                lines.append(f"  {title} fp16: {graph.fp16}")
            if graph.engine:
                ranges = "; ".join(f"{n} {r['min']}..{r['max']} (opt {r['opt']})" for n, r in graph.engine["profile"].items())
                lines.append(f"  {title} TensorRT engine ({PLAN_FILE}, {graph.engine['key']}, cosine to ONNX min "
                             f"{graph.engine['parity']['min_cosine']:.5f}): {ranges}")
        lines += [f"  {detail}" for detail in self.details]
        sizes = ", ".join(
            f"{name.replace('_', ' ')} {graph.onnx_bytes / 1e6:.1f} MB (output dims {list(graph.output_dims)})"
            for name, graph in self.graphs.items()
        )
        lines.append(f"  ONNX {sizes}; export {self.seconds:.1f} s")
        return "\n".join(lines)


def _audited(export: Callable[..., ExportResult]) -> Callable[..., ExportResult]:
    """An export changes what the next start (or `mmserve reload`) serves: it goes into the
    repository's audit log like the lifecycle's actions, failures included."""

    @functools.wraps(export)
    def run(repository: Path, plan: Callable[[], Product], *args: Any, **kwargs: Any) -> ExportResult:
        from mmserve.audit import record_export  # the audit log's home, a layer below the exporters

        try:
            result = export(repository, plan, *args, **kwargs)
        except BaseException as error:
            record_export(repository, None, error)
            raise
        record_export(repository, result, None)
        return result

    return run


@_audited
def export_product(
    repository: Path,
    plan: Callable[[], Product],
    int8: bool = False,
    profile: str = "cpu",
    tuning: EncoderTuning = EncoderTuning(),
    keep: int = DEFAULT_KEEP,
    layout: str | None = None,
    fp16: bool = False,
    tensorrt: bool = False,
) -> ExportResult:
    """Export what `plan` describes and write it as the product's new version.

    `plan` loads the checkpoint; it runs once the repository has proved writable, so a
    read-only target fails in a second, not after the slow work. Nothing reaches the
    repository unless every graph passes its parity gate. `layout`: each pipeline as an
    ensemble of step models, or fused into one model (exporters/fused.py); None: the
    profile's default.
    """
    started = time.perf_counter()
    layout = layout or default_layout(profile)
    check_layout(layout, profile)
    check_gpu_options(profile, int8=int8, fp16=fp16, tensorrt=tensorrt)  # before any slow work
    repository = ensure_writable(repository)
    product = plan()
    name = next(iter(product.kinds))
    with tempfile.TemporaryDirectory(prefix="mmserve-export-") as scratch:
        onnx: dict[str, Path] = {}
        exported: dict[str, GraphExport] = {}
        for graph in product.graphs:
            onnx[graph.name], exported[graph.name] = _export_graph(
                graph, Path(scratch) / graph.name, name, int8, fp16=fp16, tensorrt=tensorrt
            )
        # a fused pipeline runs its steps in Python: its encoders are the cpu profile's runner,
        # on onnxruntime's GPU providers with --profile gpu (fused.gpu_encoder_steps)
        models = product.models(repository, onnx, "cpu" if layout == FUSED else profile, tuning)
        if profile == "gpu":
            models = _on_gpu(models, product.graphs, onnx, layout)
        if layout == FUSED:
            models = fuse_pipelines(models, tuning, {onnx[g.name]: g.parity_feeds[0] for g in product.graphs})
        release = Release(
            product.checkpoint, product.kinds, profile,
            {graph: result.parity for graph, result in exported.items()},
            {graph: result.quantization for graph, result in exported.items() if result.quantization},
            layout,
            fp16={graph: result.fp16 for graph, result in exported.items() if result.fp16},
            tensorrt={graph: result.engine for graph, result in exported.items() if result.engine},
        )
        written = write_models(repository, models, release, keep)
    return ExportResult(
        tuple(product.kinds), product.description, tuple(m.name for m in models), exported,
        time.perf_counter() - started, written.version, tuple(product.details),
    )


def _on_gpu(models: list[ModelFolder], graphs: Sequence[Graph], onnx: Mapping[str, Path], layout: str) -> list[ModelFolder]:
    """gpu-profile encoders with a TensorRT shape profile from each product's own limits
    (Graph.axis_limits): onnxruntime's TensorRT provider then builds one engine that takes
    every request, instead of rebuilding whenever a longer input arrives."""
    from mmserve.exporters.fused import gpu_encoder_steps
    from mmserve.exporters.triton_config import set_trt_profile

    profiles = {onnx[g.name]: export_profile(onnx[g.name], g.axis_limits or {}, g.parity_feeds) for g in graphs}
    if layout == FUSED:
        return gpu_encoder_steps(models, profiles)
    for model in models:
        sources = [content for content in model.files.values() if isinstance(content, Path) and content in profiles]
        if sources:
            set_trt_profile(model.config, profiles[sources[0]])
    return models


def _export_graph(
    graph: Graph, folder: Path, product: str, int8: bool, fp16: bool = False, tensorrt: bool = False
) -> tuple[Path, GraphExport]:
    import torch

    example = tuple(torch.from_numpy(np.ascontiguousarray(graph.parity_feeds[0][n])) for n in graph.spec.input_names)
    path = export_onnx(graph.module, example, graph.spec, folder / ONNX_FILE)
    parity = require_parity(check_parity(graph.module, path, graph.parity_feeds, graph.output), f"{product} {graph.title}")
    quantization = None
    if int8:
        dev = graph.dev_set() if graph.dev_set else None
        evaluation = dev_accuracy(*dev, output=graph.output) if dev else None
        path, quantization = quantize_int8(path, graph.parity_feeds, graph.output, evaluation=evaluation)
    _, outputs = onnx_tensors(path)
    half = None
    if fp16:  # the served graph becomes FP16; its inputs and outputs keep the contract's types
        fp32_path, path = path, convert_fp16(path)
        half = fp16_report(fp32_path, path, graph.parity_feeds, graph.output)
    engine = None
    if tensorrt:  # beside the served graph, where the repository writer looks for it (tensorrt.built_plan)
        from mmserve.exporters.engines import PARITY_INPUTS, build_checked_engine, save_parity_inputs

        profile = export_profile(path, graph.axis_limits or {}, graph.parity_feeds)
        # held to the ONNX graph (cosine >= 0.999) before it is written; its record goes on the card
        engine = build_checked_engine(path, profile, path.with_name(PLAN_FILE), graph.parity_feeds, graph.output,
                                      f"{product} {graph.title}")
        save_parity_inputs(graph.parity_feeds, path.with_name(PARITY_INPUTS))
    return path, GraphExport(parity, quantization, path.stat().st_size, outputs[0].dims, half, engine)


def dev_accuracy(feeds: Sequence[Feeds], gold: Sequence[int], output: str) -> Callable[[Any], float]:
    """Accuracy of an onnxruntime session's argmax of `output` against the gold class indices."""
    expected = np.asarray(gold)

    def accuracy(session: Any) -> float:
        predictions = np.concatenate([session.run([output], feed)[0].argmax(-1) for feed in feeds])
        return float((predictions == expected).mean())

    return accuracy
