"""Bad input, as one table: every case below against every pipeline of the test repository
it applies to, over raw tritonclient gRPC (what any production app sends).

Each case expects either an answer or INVALID_ARGUMENT whose message names the input
(TEXT[0], 'AUDIO', ...); the one exception is Triton's own batch-size check, whose message
names the pipeline and the limit but no tensor. After every case a good request to the same
pipeline is answered, the tritonserver process is alive and its Python stubs are the same
processes as before (none crashed and none was restarted).

The single place that covers the matrix; the scattered tests of each line (test_text_,
test_clip_, test_speech_pipelines.py) check the finer points of each message. The table is
rendered into docs/reliability.md from a real run:
`MMSERVE_WRITE_DOCS=1 pytest tests/test_bad_input_table.py`.
"""
from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lines_clip import broken_images
from lines_speech import MAX_SECONDS
from mmserve.bench.inputs import requests_for
from mmserve.pipelines import MAX_BATCH_SIZE, Kind, PipelineSpec, spec
from mmserve.serving.clip_text import DEFAULT_MAX_LABELS
from mmserve.serving.image import DEFAULT_MAX_IMAGE_BYTES
from mmserve.serving.text import DEFAULT_MAX_TEXT_BYTES
from mmserve.supervisor import python_stubs

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"
INVALID = "StatusCode.INVALID_ARGUMENT"

Tensors = dict[str, tuple[np.ndarray, str]]  # input name -> (batched array, Triton dtype)


@dataclass(frozen=True)
class Case:
    """One row of the table: which pipelines it applies to, the request, what must come back."""

    name: str
    applies_to: str  # "any", or the input a pipeline must have: TEXT, IMAGE, AUDIO, LABELS
    request: Callable[[PipelineSpec, Tensors], Tensors]  # (contract, a good request) -> the bad one
    expect: Callable[[PipelineSpec], str | None]  # None: answered; else a regex the message matches

    def applies(self, contract: PipelineSpec) -> bool:
        return self.applies_to == "any" or any(t.name == self.applies_to for t in contract.inputs)


def _item(value: bytes) -> np.ndarray:
    return np.array([[value]], dtype=np.object_)


def _replace(good: Tensors, name: str, array: np.ndarray, dtype: str | None = None) -> Tensors:
    return {**good, name: (array, dtype or good[name][1])}


def _first(contract: PipelineSpec) -> str:
    return contract.inputs[0].name


def _wrong_dtype(contract: PipelineSpec, good: Tensors) -> Tensors:
    name = _first(contract)
    array, dtype = good[name]
    if dtype == "BYTES":
        return _replace(good, name, np.ones(array.shape, np.int32), "INT32")
    return _replace(good, name, array.astype(np.float64), "FP64")


def _without_batch_axis(contract: PipelineSpec, good: Tensors) -> Tensors:
    name = _first(contract)
    return _replace(good, name, good[name][0][0])


def _one_axis_too_many(contract: PipelineSpec, good: Tensors) -> Tensors:
    name = _first(contract)
    return _replace(good, name, good[name][0][:, None])


def _empty_batch(contract: PipelineSpec, good: Tensors) -> Tensors:
    return {name: (array[:0], dtype) for name, (array, dtype) in good.items()}


def _batch_above_maximum(contract: PipelineSpec, good: Tensors) -> Tensors:
    return {name: (np.repeat(array, MAX_BATCH_SIZE + 1, axis=0), dtype) for name, (array, dtype) in good.items()}


def _missing_input(contract: PipelineSpec, good: Tensors) -> Tensors:
    return {name: value for name, value in good.items() if name != contract.inputs[-1].name}


def _extra_input(contract: PipelineSpec, good: Tensors) -> Tensors:
    return {**good, "EXTRA": (_item(b"unexpected"), "BYTES")}


def _names_an_input(contract: PipelineSpec) -> str:
    return "input '(" + "|".join(t.name for t in contract.inputs) + ")'"


def _audio(samples: np.ndarray, rate: int = 16_000) -> Callable[[PipelineSpec, Tensors], Tensors]:
    def request(contract: PipelineSpec, good: Tensors) -> Tensors:
        return {"AUDIO": (samples.astype(np.float32)[None, :], "FP32"),
                "SAMPLE_RATE": (np.array([[rate]], np.int32), "INT32")}
    return request


def _text(value: bytes) -> Callable[[PipelineSpec, Tensors], Tensors]:
    return lambda contract, good: _replace(good, "TEXT", _item(value))


def _image(value: bytes) -> Callable[[PipelineSpec, Tensors], Tensors]:
    return lambda contract, good: _replace(good, "IMAGE", _item(value))


def _labels(names: list[bytes]) -> Callable[[PipelineSpec, Tensors], Tensors]:
    return lambda contract, good: _replace(good, "LABELS", np.array(names, dtype=np.object_).reshape(1, len(names)))


def _says(pattern: str) -> Callable[[PipelineSpec], str]:
    return lambda contract: pattern


def _answered(contract: PipelineSpec) -> None:
    return None


_BROKEN = broken_images()  # (bytes, message pattern) per broken image, shared with the CLIP tests
_TONE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)).astype(np.float32)

CASES = [
    Case("wrong dtype", "any", _wrong_dtype, lambda c: f"input '{_first(c)}' data-type is"),
    Case("batch axis missing (rank too low)", "any", _without_batch_axis, lambda c: f"input '{_first(c)}'"),
    Case("one axis too many (rank too high)", "any", _one_axis_too_many, lambda c: f"input '{_first(c)}'"),
    Case("empty batch (shape [0, ...])", "any", _empty_batch, _names_an_input),
    Case(f"batch of {MAX_BATCH_SIZE + 1} (above the maximum)", "any", _batch_above_maximum,
         lambda c: f"batch-size must be <= {MAX_BATCH_SIZE}"),
    Case("missing input", "any", _missing_input, lambda c: rf"missing required input\(s\) \['{c.inputs[-1].name}'\]"),
    Case("extra input", "any", _extra_input, _says("'EXTRA'")),
    Case("text: not UTF-8", "TEXT", _text(b"\xc3\x28 broken"), _says(r"TEXT\[0\] is not valid UTF-8")),
    Case("text: empty", "TEXT", _text(b""), _says(r"TEXT\[0\] is empty")),
    Case("text: 1 MB (truncated, answered)", "TEXT", _text(b"word " * 200_000), _answered),
    Case(f"text: above the limit ({DEFAULT_MAX_TEXT_BYTES:,} bytes)", "TEXT", _text(b"a" * (DEFAULT_MAX_TEXT_BYTES + 1)),
         _says(rf"TEXT\[0\] is {DEFAULT_MAX_TEXT_BYTES + 1:,} bytes, above this server's limit of {DEFAULT_MAX_TEXT_BYTES:,}")),
    Case("image: zero bytes", "IMAGE", _image(_BROKEN["empty"][0]), _says(_BROKEN["empty"][1])),
    Case("image: truncated JPEG", "IMAGE", _image(_BROKEN["truncated_jpeg"][0]), _says(_BROKEN["truncated_jpeg"][1])),
    Case("image: not an image (CSV bytes)", "IMAGE", _image(_BROKEN["text_file"][0]), _says(_BROKEN["text_file"][1])),
    Case("image: decompression bomb (20000x20000 PNG)", "IMAGE", _image(_BROKEN["bomb_png_20000x20000"][0]),
         _says(_BROKEN["bomb_png_20000x20000"][1])),
    Case(f"image: above the limit ({DEFAULT_MAX_IMAGE_BYTES:,} bytes)", "IMAGE",
         _image(b"\xff\xd8\xff" + bytes(DEFAULT_MAX_IMAGE_BYTES)),
         _says(rf"IMAGE\[0\] is {DEFAULT_MAX_IMAGE_BYTES + 3:,} bytes, above this server's limit of {DEFAULT_MAX_IMAGE_BYTES:,}")),
    Case("audio: NaN", "AUDIO", _audio(np.where(np.arange(16_000) == 100, np.nan, _TONE)),
         _says(r"AUDIO\[0\] has NaN or infinite samples \(the first at sample 100\)")),
    Case("audio: +Inf", "AUDIO", _audio(np.where(np.arange(16_000) == 7, np.inf, _TONE)),
         _says(r"AUDIO\[0\] has NaN or infinite samples")),
    Case("audio: no samples", "AUDIO", _audio(np.zeros(0)), _says(r"AUDIO\[0\] is empty")),
    Case(f"audio: too long ({MAX_SECONDS + 1:g} s; limit {MAX_SECONDS:g} s)", "AUDIO",
         _audio(np.zeros(int((MAX_SECONDS + 1) * 16_000))), _says(rf"AUDIO\[0\] is .* at most {MAX_SECONDS:g} s")),
    Case("audio: unsupported rate (96 kHz)", "AUDIO", _audio(_TONE, 96_000),
         _says(r"SAMPLE_RATE\[0\] is 96000 Hz; supported rates are 8000\.\.48000 Hz")),
    Case("zero-shot: no labels", "LABELS", _labels([]), _says("LABELS is empty")),
    Case(f"zero-shot: {DEFAULT_MAX_LABELS + 1} labels (limit {DEFAULT_MAX_LABELS})", "LABELS",
         _labels([f"label {i}".encode() for i in range(DEFAULT_MAX_LABELS + 1)]),
         _says(rf"LABELS has {DEFAULT_MAX_LABELS + 1} labels, above this server's limit of {DEFAULT_MAX_LABELS}")),
]

# (case, pipeline) -> what came back, for the rendered table
OUTCOMES: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def pipelines(server) -> dict[str, Kind]:
    """Every product the session's server serves (the client's view: no internal steps)."""
    from mmserve.client import Client

    with Client(server.grpc_url, timeout=30) as client:
        found = {p.name: p.kind for p in client.products() if p.state == "READY"}
    assert set(found.values()) == set(Kind), f"the test repository should serve every kind: {found}"
    return found


@functools.lru_cache(maxsize=None)
def good_request(kind: Kind) -> Tensors:
    """A realistic single-item request of `kind` (the bench's inputs), batched."""
    contract = spec(kind)
    item = requests_for(kind, 1)[0]
    return {t.name: (np.asarray(item[t.name])[None, ...], t.triton_dtype) for t in contract.inputs}


def infer(triton, pipeline: str, tensors: Tensors):
    inputs = []
    for name, (array, dtype) in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return triton.infer(pipeline, inputs, client_timeout=120)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_answered_or_refused_naming_the_input_and_nothing_dies(case: Case, pipelines, triton, server):
    applicable = {name: kind for name, kind in pipelines.items() if case.applies(spec(kind))}
    assert applicable, f"no pipeline of the test repository takes {case.applies_to}"
    stubs = set(python_stubs(server.pid))
    problems = []
    for pipeline, kind in sorted(applicable.items()):
        contract = spec(kind)
        expected = case.expect(contract)
        try:
            result = infer(triton, pipeline, case.request(contract, good_request(kind)))
            outputs = [o.name for o in result.get_response().outputs]
            OUTCOMES[case.name, pipeline] = "answered"
            if expected is not None:
                problems.append(f"{pipeline}: answered {outputs}, expected INVALID_ARGUMENT matching {expected!r}")
            elif not all(np.isfinite(result.as_numpy(o)).all() for o in outputs if result.as_numpy(o).dtype != object):
                problems.append(f"{pipeline}: answered with non-finite values")
        except InferenceServerException as error:
            message = error.message() or ""
            OUTCOMES[case.name, pipeline] = f"{error.status().removeprefix('StatusCode.')}: {message}"
            if expected is None:
                problems.append(f"{pipeline}: expected an answer, got {error.status()} {message}")
            elif error.status() != INVALID or not re.search(expected, message):
                problems.append(f"{pipeline}: expected INVALID_ARGUMENT matching {expected!r}, got {error.status()} {message}")
        try:  # the next good request is answered
            infer(triton, pipeline, good_request(kind))
        except InferenceServerException as error:
            problems.append(f"{pipeline}: the good request after the case failed: {error.status()} {error.message()}")
    assert _alive(server.pid), "tritonserver died"
    time.sleep(0.1)  # a stub killed by the case is a zombie (left out by python_stubs) once the kernel delivers its signal
    assert set(python_stubs(server.pid)) == stubs, "a Python stub died or was replaced during the case"
    assert not problems, "\n".join(problems)


def test_the_table_covers_every_case_and_pipeline(pipelines):
    """Runs after the cases: every applicable (case, pipeline) has an outcome; with
    MMSERVE_WRITE_DOCS=1 the table is written into docs/reliability.md."""
    missing = [(c.name, p) for c in CASES for p, k in pipelines.items() if c.applies(spec(k)) and (c.name, p) not in OUTCOMES]
    if len(missing) == sum(c.applies(spec(k)) for c in CASES for k in pipelines.values()):
        pytest.skip("run the whole module to render the table (the cases were deselected)")
    assert not missing, f"cases without an outcome: {missing}"
    if os.environ.get("MMSERVE_WRITE_DOCS") == "1":
        write_table(render_table(pipelines))


def render_table(pipelines: dict[str, Kind]) -> str:
    """Case x pipeline -> outcome, then one example message per case."""
    names = sorted(pipelines, key=lambda p: (spec(pipelines[p]).inputs[0].name, p))
    lines = ["| case | " + " | ".join(f"`{p}`" for p in names) + " |", "|---" * (len(names) + 1) + "|"]
    examples = []
    for case in CASES:
        cells = []
        for pipeline in names:
            outcome = OUTCOMES.get((case.name, pipeline))
            cells.append("" if outcome is None else "answered" if outcome == "answered" else outcome.split(":")[0])
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
        message = next((OUTCOMES[case.name, p] for p in names if (case.name, p) in OUTCOMES), "")
        pipeline = next((p for p in names if (case.name, p) in OUTCOMES), "")
        examples.append(f"| {case.name} | `{pipeline}` | {_cell(message)} |")
    return "\n".join([
        *lines, "",
        "Empty cell: the case does not apply (the pipeline has no such input). One message per case:", "",
        "| case | pipeline | status: message |", "|---|---|---|", *examples,
    ])


def _cell(message: str) -> str:
    message = re.sub(r"\[request id: [^]]*\] ", "", message)
    message = message.split(" NOTE: ")[0]  # Triton's advice on batch dimensions, the same every time
    return message.replace("|", "\\|").replace("\n", " ")


def write_table(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOC.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")


@pytest.mark.skipif(os.environ.get("MMSERVE_GRPC_LIMIT_TEST") != "1",
                    reason="sends a 2 GiB message (4 GB of memory, ~30 s): MMSERVE_GRPC_LIMIT_TEST=1 runs it")
def test_a_message_above_grpcs_2_gib_limit_is_resource_exhausted(server, triton):
    """Triton's gRPC server receives at most INT32_MAX bytes per message; a client without
    its own limit (tritonclient and mmserve's client stop at the same size before sending)
    gets RESOURCE_EXHAUSTED from the server, and the server carries on."""
    import grpc
    from tritonclient.grpc import service_pb2

    head = service_pb2.ModelInferRequest(model_name="text_embed").SerializeToString()
    bulk = (1 << 31) - len(head) + 16
    tag, length = bytes([0x9A, 0x06]), _varint(bulk)  # field 99, length-delimited: ignored by Triton
    with grpc.insecure_channel(server.grpc_url, options=[("grpc.max_send_message_length", -1)]) as channel:
        infer_raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as error:
            infer_raw(head + tag + length + bytes(bulk), timeout=300)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in error.value.details()
    assert infer(triton, "text_embed", good_request(Kind.TEXT_EMBED)).as_numpy("EMBEDDING").shape[0] == 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
