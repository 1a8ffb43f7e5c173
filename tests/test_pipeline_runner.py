"""The one in-process runner (mmserve/serving/pipeline.py) that the fused model, the bench's
in-process baseline and the GPU check share: its hooks, and running the steps before an encoder.

The runner's own behaviour (per-request errors, pruning, mixed requests) is
tests/test_fused_layout.py's, through the fused model that uses it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mmserve.exporters.versions import active_version
from mmserve.pipelines import EMBEDDING, TEXT
from mmserve.serving import backend_stub
from mmserve.serving.pipeline import PipelineRunner, fused_sources, load_pipeline

TEXTS = np.array([[b"where is my parcel?"], [b"I forgot my password and cannot sign in"]], dtype=np.object_)


def _served(repository: Path, pipeline: str) -> Path:
    return repository / pipeline / str(active_version(repository, pipeline))


def test_the_hook_sees_each_step_its_requests_and_time(fused_repository: Path) -> None:
    backend_stub.install()
    seen: list[tuple[str, list[str], float]] = []
    steps = load_pipeline(fused_sources(_served(fused_repository, "text_embed")), instances=0)
    runner = PipelineRunner(steps, [EMBEDDING.name], on_step=lambda model, requests, s: seen.append(
        (model, sorted(requests[0].inputs), s)))
    (answer,) = runner.run([{TEXT.name: TEXTS}], [[EMBEDDING.name]])
    assert answer[EMBEDDING.name].shape[0] == 2
    assert [model for model, _, _ in seen] == [step.model for step in steps]
    assert seen[0][1] == [TEXT.name] and all(seconds > 0 for _, _, seconds in seen)
    runner.finalize()


def test_the_steps_before_an_encoder_give_its_inputs_as_the_bench_captures_them(fused_repository: Path) -> None:
    """What the GPU check does: load only the steps before the encoder, run them, read its inputs."""
    from mmserve.bench.inprocess import InProcessPipeline

    backend_stub.install()
    sources = fused_sources(_served(fused_repository, "text_embed"))
    bench = InProcessPipeline(fused_repository, "text_embed")
    (encoder,) = bench.encoder_steps()
    encoder_source = next(source for source in sources if source.model == encoder)
    steps = load_pipeline(sources, instances=0, stop_before=encoder)
    assert encoder not in [step.model for step in steps] and steps  # the encoder is not even loaded
    runner = PipelineRunner(steps, list(encoder_source.input_map.values()))
    (tensors,) = runner.run([{TEXT.name: TEXTS}], [runner.outputs])
    bench({TEXT.name: TEXTS})
    for inner, outer in encoder_source.input_map.items():
        np.testing.assert_array_equal(tensors[outer], bench.captured[encoder][inner])
