"""Head products on one shared encoder against separately fine-tuned products: the server's
memory (RSS and PSS of tritonserver and its stubs) and throughput, each setup served by its
own tritonserver, one after the other (docs/benchmarks.md, "Head products").

    python scripts/products_bench.py --encoder-repository REPO --head-run RUN --finetuned FUSED_PRODUCT --out DIR

REPO holds text_embed (the served MiniLM); RUN is a head run folder of `mmserve products create
--mode head` (head.npz, labels.txt); FUSED_PRODUCT is a fine-tuned classifier's product folder in
the fused layout, copied under ten names (ten fine-tunes of one base have its size and code).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
from pathlib import Path

TEXTS = ["where is my parcel? it was due on monday", "I want my money back for the broken blender",
         "how do i change the password on my account", "can I talk to a real person please",
         "is the blue jacket in stock in size M", "hello there", "cancel my order right now please"]


def build(work: Path, encoder_repository: Path, head_run: Path, finetuned: Path) -> dict[str, tuple[Path, list[str]]]:
    from google.protobuf import text_format

    from mmserve.exporters.head import export_head
    from mmserve.exporters.triton_config import read_config
    from mmserve.kinds import info

    kind = info("text_classify")
    labels = (head_run / "labels.txt").read_text().split()
    setups: dict[str, tuple[Path, list[str]]] = {}
    for count in (1, 10):
        repo = work / f"heads-{count}"
        if not repo.exists():
            shutil.copytree(encoder_repository / "text_embed", repo / "text_embed")
            for i in range(count):
                export_head(repo, f"head_{i:02d}", kind, "text_embed", head_run / "head.npz", labels, head_run)
        setups[f"{count} head(s) on one text_embed (BLS)"] = (repo, [f"head_{i:02d}" for i in range(count)])
    repo = work / "ensemble-head"
    if not repo.exists():  # the other design: an ensemble [text_embed -> head step]
        shutil.copytree(encoder_repository / "text_embed", repo / "text_embed")
        export_head(repo, "head_step", kind, "text_embed", head_run / "head.npz", labels, head_run)
        step = read_config(repo / "head_step" / "config.pbtxt")
        _as_step(repo / "head_step", step)
        (repo / "ens_head").mkdir()
        (repo / "ens_head" / "1").mkdir()
        (repo / "ens_head" / "config.pbtxt").write_text(_ensemble_text(len(labels)))
    setups["1 head on one text_embed (ensemble)"] = (repo, ["ens_head"])
    repo = work / "finetuned-10"
    if not repo.exists():
        for i in range(10):
            name = f"ft_{i:02d}"
            shutil.copytree(finetuned, repo / name, symlinks=False)
            _make_distinct(repo / name, i)
            for config_path in (repo / name).rglob("config.pbtxt"):
                config = read_config(config_path)
                if config is not None and config.name == finetuned.name:
                    config.name = name
                    config_path.write_text(text_format.MessageToString(config))
    setups["10 fine-tuned products (own encoder each)"] = (repo, [f"ft_{i:02d}" for i in range(10)])
    return setups


def _make_distinct(folder: Path, index: int) -> None:
    """Ten fine-tunes have ten different weight files: each copy's ONNX gets a bias nudged by a
    few ulps, so no two copies are byte-identical (the encoder cache of issue 23 shares the
    pages of identical files between processes, which separate fine-tunes would not)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    for path in folder.rglob("*.onnx"):
        model = onnx.load(str(path))
        for initializer in model.graph.initializer:
            if initializer.data_type == onnx.TensorProto.FLOAT and len(initializer.dims) == 1:
                values = numpy_helper.to_array(initializer).copy()
                values[0] += np.float32(1e-6 * (index + 1))
                initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
                break
        onnx.save(model, str(path))


def _as_step(folder: Path, config) -> None:
    """The head model folder turned into an ensemble step: EMBEDDING in, the step class."""
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import DataType, ModelInput

    del config.input[:]
    config.input.append(ModelInput(name="EMBEDDING", data_type=DataType.Value("TYPE_FP32"), dims=[384]))
    del config.version_policy.specific.versions[:]
    config.ClearField("version_policy")
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    for version in [p for p in folder.iterdir() if p.name.isdigit()]:
        (version / "model.py").write_text("from mmserve.serving.head import HeadStepModel as TritonPythonModel  # noqa: F401\n")


def _ensemble_text(classes: int) -> str:
    return f"""name: "ens_head"
platform: "ensemble"
max_batch_size: 64
input {{ name: "TEXT" data_type: TYPE_STRING dims: 1 }}
output {{ name: "PROBS" data_type: TYPE_FP32 dims: {classes} }}
output {{ name: "LABEL" data_type: TYPE_STRING dims: 1 }}
ensemble_scheduling {{
  step {{ model_name: "text_embed" model_version: -1 input_map {{ key: "TEXT" value: "TEXT" }}
         output_map {{ key: "EMBEDDING" value: "embedding" }} }}
  step {{ model_name: "head_step" model_version: -1 input_map {{ key: "EMBEDDING" value: "embedding" }}
         output_map {{ key: "PROBS" value: "PROBS" }} output_map {{ key: "LABEL" value: "LABEL" }} }}
}}
"""


def memory_mb(root_pid: int) -> tuple[float, float, int]:
    """RSS and PSS (MB) of a process and its children, and how many processes."""
    pids = [root_pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == root_pid:
                    pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    rss = pss = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError:
            pass
    return rss, pss, len(pids)


def throughput(url: str, products: list[str], concurrency: int, seconds: float) -> tuple[float, float]:
    """(requests/s, p50 ms) with `concurrency` threads, each sending one text at a time, products in turn."""
    from mmserve.client import Client

    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker(index: int) -> None:
        own: list[float] = []
        with Client(url, timeout=60) as client:
            n = index
            while time.perf_counter() < stop:
                started = time.perf_counter()
                client.classify_text(TEXTS[n % len(TEXTS)], pipeline=products[n % len(products)])
                own.append(time.perf_counter() - started)
                n += 1
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / seconds, 1000 * statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder-repository", type=Path, required=True)
    parser.add_argument("--head-run", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    from mmserve.server import ServerPorts, TritonServer

    args.out.mkdir(parents=True, exist_ok=True)
    setups = build(args.out, args.encoder_repository, args.head_run, args.finetuned)
    rows = ["| setup | processes | server RSS | server PSS | c=1 p50 | c=1 req/s | c=8 req/s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for title, (repo, products) in setups.items():
        with TritonServer(repo, ServerPorts.free(), log_file=args.out / f"{repo.name}.log") as server:
            throughput(server.grpc_url, products, 2, 2.0)  # warm-up: every product answers once or more
            rss, pss, processes = memory_mb(server.pid)
            one, p50 = throughput(server.grpc_url, products, 1, args.seconds)
            eight, _ = throughput(server.grpc_url, products, 8, args.seconds)
        row = f"| {title} | {processes} | {rss:.0f} MB | {pss:.0f} MB | {p50:.1f} ms | {one:.0f} | {eight:.0f} |"
        print(row, flush=True)
        rows.append(row)
    (args.out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
