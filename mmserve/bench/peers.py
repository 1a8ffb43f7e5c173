"""The side-by-side peers: infinity-emb and a naive FastAPI + transformers server.

Neither is a dependency of mmserve: they live in their own virtual environment
that the bench creates on first use (artifacts/bench/venv-peers). Both serve
the same MiniLM folder as our text_embed, on the cores the bench process runs
on (children inherit its CPU affinity), behind an OpenAI-style /embeddings
endpoint that perf_analyzer drives with the same sentences and concurrency.
Before a peer is timed its vectors are compared with sentence-transformers'.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np

from mmserve.bench.perf import BenchError

PEER_REQUIREMENTS = ("infinity-emb[all]==0.0.78", "torch==2.13.0")
SERVED_NAME = "minilm"
WARM_UP = ("hi", "Where is my parcel? I ordered it last week.",
           "Shares of Northwind Bank rose 4% after the quarterly results beat expectations " * 3) * 3
_HERE = Path(__file__).resolve().parent


def _base_python() -> str:
    """The interpreter the project's venv was made from (a venv of a venv would share its site)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(base) if base.exists() else sys.executable


def ensure_peer_env(venv: Path, log: Callable[[str], None] = print) -> Path:
    """Create the peers' venv once (~1 min); returns its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".mmserve-peers"
    if stamp.exists() and stamp.read_text() == "\n".join(PEER_REQUIREMENTS):
        return python
    log(f"creating the peers' environment in {venv} (infinity-emb, torch; once)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [_base_python(), "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS],
        # infinity-emb[all] pulls a torchvision that breaks at import against this torch; unused here.
        [str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"could not prepare the peers' environment ({' '.join(step)}):\n{done.stderr[-2000:]}")
    stamp.write_text("\n".join(PEER_REQUIREMENTS))
    return python


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PeerServer:
    """A peer's process: started, checked healthy, stopped; perf_analyzer talks to `url` + `endpoint`."""

    name: str
    command: list[str]
    endpoint: str  # path of the OpenAI-style embeddings route, without the leading slash
    port: int
    cwd: Path | None = None
    log_file: Path | None = None
    startup_timeout_s: float = 300.0
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: IO | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "PeerServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")
        env.pop("OMP_NUM_THREADS", None)  # each peer's own defaults, as its users run it
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_file, "w")
        self._process = subprocess.Popen(
            self.command, cwd=self.cwd, env=env, stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                raise BenchError(f"peer {self.name} exited while starting (log: {self.log_file})")
            try:
                embed_http(self, ["warm-up"])
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                time.sleep(1.0)
                continue
            for text in WARM_UP:  # first calls pay lazy initialisation; keep it out of the figures
                embed_http(self, [text])
            return self
        self.stop()
        raise BenchError(f"peer {self.name} not ready after {self.startup_timeout_s:.0f} s (log: {self.log_file})")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> "PeerServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embed_http(peer: PeerServer, texts: Sequence[str], timeout: float = 60.0) -> np.ndarray:
    """Vectors for `texts` from a peer's /embeddings route, in input order."""
    body = json.dumps({"model": SERVED_NAME, "input": list(texts)}).encode()
    request = urllib.request.Request(
        f"http://{peer.url}/{peer.endpoint}", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    data = sorted(answer["data"], key=lambda d: d["index"])
    return np.asarray([d["embedding"] for d in data], dtype=np.float32)


def naive_peer(python: Path, model: Path, workdir: Path) -> PeerServer:
    port = _free_port()
    command = [str(python), str(_HERE / "peer_naive.py"), "--model", str(model), "--port", str(port)]
    return PeerServer("naive FastAPI", command, "v1/embeddings", port, log_file=workdir / "peer-naive.log")


def infinity_peer(python: Path, model: Path, workdir: Path, engine: str = "torch", cache: Path | None = None) -> PeerServer:
    """infinity-emb v2 over the same folder; `optimum` runs an ONNX copy through onnxruntime."""
    port = _free_port()
    cli = str(python.parent / "infinity_emb")
    common = ["--served-model-name", SERVED_NAME, "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
              "--no-vector-disk-cache", "--pooling-method", "mean", "--log-level", "warning"]
    if engine == "optimum":
        onnx_folder = onnx_copy(python, model, (cache or workdir) / f"{model.name}-{model.parent.name}-onnx")
        # The optimum engine compares bare file names: start it inside the folder with --model-id .
        command = [cli, "v2", "--model-id", ".", "--engine", "optimum", *common]
        return PeerServer("infinity-emb (optimum/ORT)", command, "embeddings", port, cwd=onnx_folder,
                          log_file=workdir / "peer-infinity-optimum.log")
    command = [cli, "v2", "--model-id", str(model), "--engine", "torch", *common]
    return PeerServer("infinity-emb (torch)", command, "embeddings", port, log_file=workdir / "peer-infinity-torch.log")


def onnx_copy(python: Path, model: Path, target: Path) -> Path:
    """The model folder exported by optimum, as infinity's optimum engine expects it (made once)."""
    if (target / "model.onnx").exists():
        return target
    cli = str(python.parent / "optimum-cli")
    done = subprocess.run(
        # --library-name transformers: the sentence-transformers export would name its outputs
        # token_embeddings/sentence_embedding, which infinity's optimum engine does not read.
        [cli, "export", "onnx", "--model", str(model), "--task", "feature-extraction",
         "--library-name", "transformers", str(target)],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    if done.returncode != 0 or not (target / "model.onnx").exists():
        raise BenchError(f"optimum-cli could not export {model} to ONNX:\n{done.stderr[-2000:]}")
    return target


def reference_vectors(python: Path, model: Path, texts: Sequence[str], workdir: Path) -> np.ndarray:
    """sentence-transformers' normalised vectors for `texts`, computed in the peers' environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    texts_file, out = workdir / "reference-texts.json", workdir / "reference.npy"
    texts_file.write_text(json.dumps(list(texts)), encoding="utf-8")
    done = subprocess.run(
        [str(python), str(_HERE / "peer_reference.py"), "--model", str(model), "--texts", str(texts_file),
         "--out", str(out)],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    if done.returncode != 0:
        raise BenchError(f"sentence-transformers reference failed:\n{done.stderr[-2000:]}")
    return np.load(out)

