"""Any subset of a pipeline's outputs, and Triton's classification extension on PROBS.

DESIGN.md promises both: a caller may name any non-empty subset of a pipeline's outputs
(or none, and get all), and may ask for `class_count` on `PROBS`. Triton prunes the
steps of an ensemble that no requested output needs; these tests run every subset of
every pipeline the test repository serves, through raw tritonclient, and compare each
answer with the all-outputs call.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from lines_clip import PRODUCT, encode, scene
from lines_speech import W2V_PIPELINE, speech_paths
from mmserve.pipelines import AUDIO, IMAGE, LABELS, PROBS, SAMPLE_RATE, TEXT, Kind, TensorSpec, spec

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts

# Every pipeline of the test repository and its kind (test_the_table_covers_every_pipeline
# keeps this list honest when a product line adds one).
PIPELINES: dict[str, Kind] = {
    "text_embed": Kind.TEXT_EMBED,
    "text_classify": Kind.TEXT_CLASSIFY,
    "sentiment": Kind.TEXT_CLASSIFY,
    "text_ner": Kind.TEXT_NER,
    "image_embed": Kind.IMAGE_EMBED,
    "clip_text_embed": Kind.CLIP_TEXT_EMBED,
    "zero_shot_image": Kind.ZERO_SHOT_IMAGE,
    f"{PRODUCT}_image_embed": Kind.IMAGE_EMBED,
    f"{PRODUCT}_clip_text_embed": Kind.CLIP_TEXT_EMBED,
    f"{PRODUCT}_zero_shot_image": Kind.ZERO_SHOT_IMAGE,
    "audio_classify": Kind.AUDIO_CLASSIFY,
    "audio_embed": Kind.AUDIO_EMBED,
    W2V_PIPELINE: Kind.AUDIO_CLASSIFY,
}
CLASSIFIERS = [name for name, kind in PIPELINES.items() if kind in (Kind.TEXT_CLASSIFY, Kind.AUDIO_CLASSIFY)]
ZERO_SHOT = [name for name, kind in PIPELINES.items() if kind is Kind.ZERO_SHOT_IMAGE]
CANDIDATES = ["red circle", "blue star", "green square", "yellow triangle"]


def _subsets(kind: Kind) -> list[tuple[str, ...] | None]:
    """None (no outputs named) and every non-empty subset of the kind's outputs, in every order."""
    names = [t.name for t in spec(kind).outputs]
    subsets: list[tuple[str, ...] | None] = [None]
    for size in range(1, len(names) + 1):
        subsets += list(itertools.permutations(names, size))
    return subsets


CASES = [
    pytest.param(pipeline, subset, id=f"{pipeline}-{'+'.join(subset) if subset else 'none'}")
    for pipeline, kind in PIPELINES.items()
    for subset in _subsets(kind)
]


def _input(tensor: TensorSpec, array: np.ndarray) -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput(tensor.name, list(array.shape), tensor.triton_dtype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def _tone(hz: float, rate: int = 16_000, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# Two different items per modality: every call of this module sends the same batch.
TEXTS = ["Where is my parcel? I ordered it from Berlin last week.", "Angela Merkel met Siemens"]
RATE = 16_000
CLIPS = [_tone(440.0, RATE), _tone(1250.0, RATE)]


@functools.cache
def images() -> tuple[bytes, ...]:
    return encode(scene(), "PNG"), encode(scene(40, 64).rotate(90, expand=True), "JPEG")


def inputs_for(kind: Kind) -> list[grpcclient.InferInput]:
    """The module's batch of two items, as tensors for a pipeline of this kind."""
    arrays: dict[str, np.ndarray] = {
        TEXT.name: np.array([[t.encode()] for t in TEXTS], dtype=np.object_),
        IMAGE.name: np.array([[i] for i in images()], dtype=np.object_),
        LABELS.name: np.array([[c.encode() for c in CANDIDATES]] * 2, dtype=np.object_),
        AUDIO.name: np.stack(CLIPS),
        SAMPLE_RATE.name: np.array([[RATE]] * 2, dtype=np.int32),
    }
    return [_input(tensor, arrays[tensor.name]) for tensor in spec(kind).inputs]


def infer(triton, pipeline: str, outputs: list[grpcclient.InferRequestedOutput] | None) -> grpcclient.InferResult:
    return triton.infer(pipeline, inputs_for(PIPELINES[pipeline]), outputs=outputs)


def answered(result: grpcclient.InferResult) -> dict[str, np.ndarray]:
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


@pytest.fixture(scope="module")
def all_outputs(triton) -> dict[str, dict[str, np.ndarray]]:
    """Each pipeline's answer when every output is named: what every subset must reproduce."""
    return {
        pipeline: answered(infer(triton, pipeline, [grpcclient.InferRequestedOutput(t.name) for t in spec(kind).outputs]))
        for pipeline, kind in PIPELINES.items()
    }


def assert_same_values(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert got.shape == expected.shape, name
    if expected.dtype == np.object_:
        assert got.tolist() == expected.tolist(), name
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=name)


def test_the_table_covers_every_pipeline(client):
    products = {product.name for product in client.products()}
    assert products == set(PIPELINES), "a product line added or dropped a pipeline: update PIPELINES here"


@pytest.mark.parametrize(("pipeline", "subset"), CASES)
def test_any_subset_of_outputs_answers_exactly_those_with_the_all_outputs_values(triton, all_outputs, pipeline, subset):
    expected = all_outputs[pipeline]
    assert set(expected) == {t.name for t in spec(PIPELINES[pipeline]).outputs}
    outputs = [grpcclient.InferRequestedOutput(name) for name in subset] if subset is not None else None
    got = answered(infer(triton, pipeline, outputs))
    assert set(got) == set(subset if subset is not None else expected)
    for name, value in got.items():
        assert_same_values(value, expected[name], f"{pipeline} {name}")


def _client_answer(client, pipeline: str) -> dict[str, Any]:
    """Our client's answer for the module's batch, as the tensors it was made of (ENTITIES: the documents)."""
    kind = PIPELINES[pipeline]
    if kind in (Kind.TEXT_CLASSIFY, Kind.AUDIO_CLASSIFY):
        results = (client.classify_text(TEXTS, pipeline) if kind is Kind.TEXT_CLASSIFY
                   else client.classify_audio(CLIPS, RATE, pipeline))
        return {PROBS.name: np.stack([r.probs for r in results]),
                "LABEL": np.array([[r.label.encode()] for r in results], dtype=np.object_)}
    if kind is Kind.TEXT_NER:
        entities = client.extract_entities(TEXTS, pipeline)
        return {"ENTITIES": [[dataclasses.asdict(e) for e in row] for row in entities]}
    if kind is Kind.ZERO_SHOT_IMAGE:
        return {PROBS.name: np.stack([r.probs for r in client.zero_shot(list(images()), CANDIDATES, pipeline)])}
    embed = {
        Kind.TEXT_EMBED: lambda: client.embed_text(TEXTS, pipeline),
        Kind.CLIP_TEXT_EMBED: lambda: client.embed_clip_texts(TEXTS, pipeline),
        Kind.IMAGE_EMBED: lambda: client.embed_images(list(images()), pipeline),
        Kind.AUDIO_EMBED: lambda: client.embed_audio(CLIPS, RATE, pipeline),
    }[kind]
    return {"EMBEDDING": embed()}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_our_client_answers_the_all_outputs_values(client, all_outputs, pipeline):
    expected = all_outputs[pipeline]
    got = _client_answer(client, pipeline)
    assert set(got) == set(expected)
    for name, value in got.items():
        if name == "ENTITIES":  # the client parses the JSON documents
            assert value == [json.loads(cell) for cell in expected[name][:, 0]]
        else:
            assert_same_values(value, expected[name], f"{pipeline} {name}")


def _labels_file(pipeline: str, workdir: Path, text_checkpoints: dict[str, Path]) -> list[str]:
    """The label names the checkpoint was trained with (labels.txt in output order)."""
    paths = speech_paths(workdir)
    checkpoint = {
        "text_classify": text_checkpoints["classify"],
        "sentiment": text_checkpoints["sentiment"],
        "audio_classify": paths.whisper,
        W2V_PIPELINE: paths.wav2vec2,
    }[pipeline]
    return [line.strip() for line in (checkpoint / "labels.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def _classes(cells: np.ndarray) -> list[list[tuple[float, int, str | None]]]:
    """Triton's "score:index[:label]" strings -> (score, index, label) per row."""
    rows = []
    for row in cells:
        parsed = []
        for cell in row:
            score, index, *label = cell.decode().split(":", 2)
            parsed.append((float(score), int(index), label[0] if label else None))
        rows.append(parsed)
    return rows


@pytest.mark.parametrize("pipeline", CLASSIFIERS)
def test_class_count_on_probs_answers_the_top_classes_with_their_label_names(
    triton, all_outputs, workdir, text_checkpoints, pipeline
):
    labels = _labels_file(pipeline, workdir, text_checkpoints)
    probs = all_outputs[pipeline][PROBS.name]
    assert probs.shape[1] == len(labels)
    for count in sorted({1, 2, len(labels)}):
        result = infer(triton, pipeline, [grpcclient.InferRequestedOutput(PROBS.name, class_count=count)])
        cells = result.as_numpy(PROBS.name)
        assert cells.shape == (probs.shape[0], count)
        for row, classes in enumerate(_classes(cells)):
            order = [index for _, index, _ in classes]
            assert [probs[row, i] for i in order] == sorted(probs[row], reverse=True)[:count]
            assert [label for _, _, label in classes] == [labels[i] for i in order]
            np.testing.assert_allclose([score for score, _, _ in classes], probs[row, order], rtol=1e-5)


@pytest.mark.parametrize("pipeline", CLASSIFIERS)
def test_class_count_on_probs_beside_label_agrees_with_label(triton, all_outputs, pipeline):
    result = infer(
        triton, pipeline, [grpcclient.InferRequestedOutput("LABEL"), grpcclient.InferRequestedOutput(PROBS.name, class_count=1)]
    )
    top = [classes[0][2] for classes in _classes(result.as_numpy(PROBS.name))]
    assert top == [cell.decode() for cell in result.as_numpy("LABEL")[:, 0]]
    assert result.as_numpy("LABEL").tolist() == all_outputs[pipeline]["LABEL"].tolist()


@pytest.mark.parametrize("pipeline", ZERO_SHOT)
def test_class_count_on_zero_shot_probs_indexes_the_request_labels(triton, all_outputs, pipeline):
    """Zero-shot labels come with each request, so Triton answers "score:index" into LABELS."""
    probs = all_outputs[pipeline][PROBS.name]
    result = infer(triton, pipeline, [grpcclient.InferRequestedOutput(PROBS.name, class_count=2)])
    for row, classes in enumerate(_classes(result.as_numpy(PROBS.name))):
        order = [index for _, index, _ in classes]
        assert [probs[row, i] for i in order] == sorted(probs[row], reverse=True)[:2]
        assert [label for _, _, label in classes] == [None, None]
        np.testing.assert_allclose([score for score, _, _ in classes], probs[row, order], rtol=1e-5)


# --- without a server: the rule the exporters keep, and the post-processing step's answers ---------


def test_an_ensemble_output_that_feeds_a_later_step_is_refused():
    from mmserve.exporters.triton_config import Tensor, ensemble_config, ensemble_step

    steps = [
        ensemble_step("enc", {"input_ids": "input_ids"}, {"probs": "PROBS"}),
        ensemble_step("post", {"probs": "PROBS"}, {"LABEL": "LABEL"}),
    ]
    outputs = [Tensor.from_spec(PROBS, (3,)), Tensor("LABEL", "TYPE_STRING", (1,))]
    with pytest.raises(ValueError, match="output PROBS also feeds step post.*pass PROBS through"):
        ensemble_config("bad", [Tensor.from_spec(TEXT)], outputs, steps)
    with pytest.raises(ValueError, match="output LABEL must come from exactly one step, not none"):
        ensemble_config("bad", [Tensor.from_spec(TEXT)], outputs, steps[:1])


def test_the_classification_tail_produces_every_output_from_its_last_step():
    from mmserve.exporters.classification import classification_tail
    from mmserve.exporters.triton_config import Tensor

    post, steps, outputs = classification_tail("shop", "shop_encoder", {"x": "x"}, Tensor("probs", "TYPE_FP32", (3,)), ["a", "b", "c"])
    assert [t.name for t in outputs] == [t.name for t in spec(Kind.TEXT_CLASSIFY).outputs]
    assert set(steps[-1].output_map.values()) == {t.name for t in outputs}
    assert not {t.name for t in outputs} & set(steps[0].output_map.values())
    probs_output = next(o for o in post.config.output if o.name == PROBS.name)
    assert probs_output.label_filename == "labels.txt" and post.files["labels.txt"] == "a\nb\nc\n"


def test_the_post_processing_step_answers_what_is_named():
    from mmserve.serving.text import classification_outputs

    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]], dtype=np.float32)
    both = classification_outputs(probs, ["a", "b", "c"], [])
    assert both["PROBS"] is probs and both["LABEL"].tolist() == [[b"b"], [b"a"]]
    assert list(classification_outputs(probs, ["a", "b", "c"], ["LABEL"])) == ["LABEL"]
    assert list(classification_outputs(probs, ["a", "b", "c"], ["PROBS"])) == ["PROBS"]
    with pytest.raises(ValueError, match="scores 3 classes but labels.txt names 2"):
        classification_outputs(probs, ["a", "b"], ["PROBS"])
