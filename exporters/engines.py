"""TensorRT engines built where they are served, checked against their ONNX graph.

A plan loads only in the TensorRT that built it, on GPUs of the compute capability it was
built for. So a `tensorrt_plan` model's version folder keeps its source: the ONNX graph,
the parity inputs (`parity.npz`) and `engine.json` (what built the plan: TensorRT version,
compute capability, shape profile, parity figures). On the GPU machine that serves it:

    python -m mmserve.exporters.engines check REPOSITORY   # exit 2 naming each plan built elsewhere
    python -m mmserve.exporters.engines build REPOSITORY   # (re)build those here, from the ONNX

`build` keeps each engine under `<version>/engines/<trt version>-<sm>/` (the cache: a pod
restarted on the same GPU type reuses it), checks its outputs against the ONNX graph on the
parity inputs (cosine >= 0.999, else refused) and puts it in place as `model.plan` with its
record. Run it as the GPU pod's init step (docs/deploy.md) or once before `mmserve serve`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmserve.exporters.onnx_export import ExportError
from mmserve.exporters.tensorrt import (
    ENGINE_RECORD,
    EngineMismatch,
    ShapeProfile,
    build_engine,
    check_engine_record,
    engine_key,
    engine_parity,
    engine_record,
    require_tensorrt,
)
from mmserve.exporters.triton_config import PLAN_FILE, TENSORRT_PLAN, read_config
from mmserve.repository_layout import ONNX_FILE

PARITY_INPUTS = "parity.npz"  # the export's parity inputs, batch by batch: "<batch>/<input>"
ENGINE_CACHE = "engines"


def save_parity_inputs(feeds: Sequence[Mapping[str, np.ndarray]], path: Path) -> Path:
    np.savez_compressed(path, **{f"{i}/{name}": np.asarray(a) for i, feed in enumerate(feeds) for name, a in feed.items()})
    return path


def load_parity_inputs(path: Path) -> list[dict[str, np.ndarray]]:
    feeds: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            index, name = key.split("/", 1)
            feeds.setdefault(int(index), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]


def profile_from_record(record: Mapping[str, Any]) -> ShapeProfile:
    return {name: (tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for name, r in record["profile"].items()}


class EngineRunner:
    """One engine on device 0, run on host inputs (copies included, like a served request)."""

    def __init__(self, plan: bytes) -> None:
        trt = require_tensorrt()
        from mmserve.exporters.cuda_runtime import CudaRuntime

        self.trt, self.cuda = trt, CudaRuntime.load()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ExportError(f"TensorRT {trt.__version__} could not load the engine (built by another version?)")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def dtype(self, name: str) -> Any:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def stage(self, feed: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        """FEED's inputs copied to the device once, and its outputs allocated there: what
        `run_staged` runs without any allocation or host copy (the engine's own time)."""
        from mmserve.exporters.cuda_runtime import DeviceArray

        inputs = {name: DeviceArray.from_numpy(self.cuda, feed[name], self.dtype(name)) for name in self.inputs}
        for name, device in inputs.items():
            self.context.set_input_shape(name, device.shape)
        outputs = {name: DeviceArray(self.cuda, tuple(self.context.get_tensor_shape(name)), self.dtype(name))
                   for name in self.outputs}
        return {"inputs": inputs, "outputs": outputs}

    def run_staged(self, staged: Mapping[str, Mapping[str, Any]], download: bool = True) -> dict[str, np.ndarray]:
        for name, device in staged["inputs"].items():
            self.context.set_input_shape(name, device.shape)
            self.context.set_tensor_address(name, device.pointer)
        for name, device in staged["outputs"].items():
            self.context.set_tensor_address(name, device.pointer)
        if not self.context.execute_async_v3(self.stream):
            raise ExportError("TensorRT could not run the engine (execute_async_v3 returned False)")
        self.cuda.synchronize(self.stream)
        return {name: device.numpy() for name, device in staged["outputs"].items()} if download else {}

    @staticmethod
    def free(staged: Mapping[str, Mapping[str, Any]]) -> None:
        for group in staged.values():
            for device in group.values():
                device.free()

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        staged = self.stage(feed)
        try:
            return self.run_staged(staged)
        finally:
            self.free(staged)


def graph_outputs(onnx_path: Path, feeds: Sequence[Mapping[str, np.ndarray]], output: str) -> list[np.ndarray]:
    """The FP32 graph's outputs on onnxruntime CPU: the reference an engine is held to."""
    import onnxruntime as ort

    from mmserve.exporters.fp16 import fp32_graph

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(fp32_graph(onnx_path)), options, providers=["CPUExecutionProvider"])
    return [session.run([output], dict(feed))[0] for feed in feeds]


def build_checked_engine(onnx_path: Path, profile: ShapeProfile, plan: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                         output: str, what: str, fp16_graph: bool | None = None) -> dict[str, Any]:
    """Build the engine here, hold it to the ONNX graph on `feeds` and return its record
    (written beside the plan as ENGINE_RECORD); a failing engine is removed and refused."""
    from mmserve.exporters.cuda_runtime import gpu_capability

    trt = require_tensorrt()
    if fp16_graph is None:
        from mmserve.exporters.tensorrt import graph_is_fp16

        fp16_graph = graph_is_fp16(onnx_path)
    data = build_engine(onnx_path, [profile], plan, fp16_graph=fp16_graph)
    runner = EngineRunner(data)
    try:
        parity = engine_parity([runner.run(feed)[output] for feed in feeds], graph_outputs(onnx_path, feeds, output), what)
    except ExportError:
        plan.unlink(missing_ok=True)
        raise
    record = {**engine_record(trt.__version__, gpu_capability(), profile, parity), "parity_output": output,
              "onnx": onnx_path.name, "fp16_graph": fp16_graph}
    (plan.parent / ENGINE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def engine_sources(onnx_path: Path) -> list[Path]:
    """What a tensorrt_plan version folder keeps beside its plan: the graph it was built from,
    the FP32 graph it is held to, the parity inputs and the record."""
    from mmserve.exporters.fp16 import fp32_graph

    onnx_path = Path(onnx_path)
    candidates = [onnx_path, fp32_graph(onnx_path), onnx_path.with_name(PARITY_INPUTS), onnx_path.with_name(ENGINE_RECORD)]
    return [path for path in dict.fromkeys(candidates) if path.is_file()]


def engine_folders(repository: Path) -> list[Path]:
    """Every version folder of a tensorrt_plan model in the repository."""
    folders = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = read_config(config_path)
        if config is not None and config.platform == TENSORRT_PLAN:
            folders += sorted(p for p in config_path.parent.iterdir() if p.is_dir() and p.name.isdigit())
    return folders


def check_repository(repository: Path, tensorrt_version: str, capability: str) -> list[str]:
    """Why each plan of the repository cannot load here (empty: every one can)."""
    problems = []
    for folder in engine_folders(repository):
        record_path = folder / ENGINE_RECORD
        if not record_path.is_file():
            problems.append(f"{folder}: no {ENGINE_RECORD} (who built {PLAN_FILE} is unknown): rebuild it here with `build`")
            continue
        try:
            check_engine_record(json.loads(record_path.read_text(encoding="utf-8")), tensorrt_version, capability, str(folder))
        except EngineMismatch as error:
            problems.append(str(error))
    return problems


def build_repository(repository: Path) -> list[str]:
    """Build (or take from the cache) every plan that was built elsewhere; what was done, per folder."""
    from mmserve.exporters.cuda_runtime import gpu_capability

    trt = require_tensorrt()
    version, capability = trt.__version__, gpu_capability()
    key, done = engine_key(version, capability), []
    for folder in engine_folders(repository):
        record_path = folder / ENGINE_RECORD
        record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
        if record and (record["tensorrt"], record["capability"]) == (version, capability) and (folder / PLAN_FILE).is_file():
            done.append(f"{folder}: engine already built here ({key})")
            continue
        cached = folder / ENGINE_CACHE / key
        if not (cached / PLAN_FILE).is_file():
            onnx = folder / (record or {}).get("onnx", ONNX_FILE)
            if record is None or not onnx.is_file():
                raise ExportError(f"{folder}: cannot rebuild {PLAN_FILE}: it keeps no model.onnx and {ENGINE_RECORD} "
                                  "(export it again with --tensorrt on a machine with mmserve 0.1+)")
            feeds = load_parity_inputs(folder / PARITY_INPUTS) if (folder / PARITY_INPUTS).is_file() else []
            if not feeds:
                raise ExportError(f"{folder}: no {PARITY_INPUTS}: an engine is not put live unchecked")
            cached.mkdir(parents=True, exist_ok=True)
            build_checked_engine(onnx, profile_from_record(record), cached / PLAN_FILE, feeds, record["parity_output"],
                                 str(folder), fp16_graph=record.get("fp16_graph"))
        shutil.copyfile(cached / PLAN_FILE, folder / PLAN_FILE)
        shutil.copyfile(cached / ENGINE_RECORD, record_path)
        done.append(f"{folder}: engine {key} in place")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmserve.exporters.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("check", "build"))
    parser.add_argument("repository", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.action == "build":
            print("\n".join(build_repository(args.repository)) or "no tensorrt_plan model in the repository")
            return 0
        from mmserve.exporters.cuda_runtime import gpu_capability

        problems = check_repository(args.repository, require_tensorrt().__version__, gpu_capability())
    except Exception as error:  # noqa: BLE001 - a clear line, not a traceback, for an init container's log
        print(f"engines {args.action}: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"engines check: {problem}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
