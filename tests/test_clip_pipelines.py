"""The CLIP pipelines over real gRPC, as a raw tritonclient sees them (the public contract)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lines_clip import PRODUCT, broken_images, encode, scene, tiny_clip_checkpoint, valid_images
from mmserve.pipelines import spec

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts

CLIP_PIPELINES = {"image_embed": "image_embed", "clip_text_embed": "clip_text_embed", "zero_shot_image": "zero_shot_image"}
IMAGE_PIPELINES = ["image_embed", "zero_shot_image"]
LABELS = ["red circle", "blue star", "green square"]


@pytest.fixture(scope="module")
def reference(workdir: Path):
    """The checkpoint as plain open_clip loads it: what the server must reproduce."""
    from mmserve.training.clip_checkpoint import load_clip_checkpoint

    return load_clip_checkpoint(tiny_clip_checkpoint(workdir))


def _bytes(items) -> np.ndarray:
    return np.array([[x.encode() if isinstance(x, str) else x] for x in items], dtype=np.object_)


def infer_images(triton, pipeline: str, images: list[bytes], labels: list[str] | None = None):
    image = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    image.set_data_from_numpy(_bytes(images))
    inputs = [image]
    if pipeline.endswith("zero_shot_image"):
        names = np.array([[label.encode() for label in (labels or LABELS)]] * len(images), dtype=np.object_)
        label_input = grpcclient.InferInput("LABELS", list(names.shape), "BYTES")
        label_input.set_data_from_numpy(names)
        inputs.append(label_input)
    return triton.infer(pipeline, inputs)


def infer_texts(triton, pipeline: str, texts: list[str | bytes]):
    text = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(_bytes(texts))
    return triton.infer(pipeline, [text])


def _open_clip_image_embeddings(reference, images: list[bytes]) -> np.ndarray:
    import torch

    from mmserve.serving.image import decode_image

    pixels = torch.stack([reference.preprocess(decode_image(data)) for data in images])
    with torch.no_grad():
        return reference.model.encode_image(pixels, normalize=True).numpy()


def _open_clip_text_embeddings(reference, texts: list[str]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return reference.model.encode_text(reference.tokenizer(texts), normalize=True).numpy()


def test_every_pipeline_states_the_contract_names(triton):
    for prefix in ("", f"{PRODUCT}_"):
        for pipeline, kind in CLIP_PIPELINES.items():
            metadata = triton.get_model_metadata(prefix + pipeline, as_json=True)
            contract = spec(kind)
            assert [i["name"] for i in metadata["inputs"]] == [t.name for t in contract.inputs]
            assert [i["datatype"] for i in metadata["inputs"]] == [t.triton_dtype for t in contract.inputs]
            assert [o["name"] for o in metadata["outputs"]] == [t.name for t in contract.outputs]
            assert [o["datatype"] for o in metadata["outputs"]] == [t.triton_dtype for t in contract.outputs]


def test_product_shares_the_preprocessing_models(triton):
    index = {m["name"] for m in triton.get_model_repository_index(as_json=True)["models"]}
    assert {f"{PRODUCT}_image_embed", f"{PRODUCT}_zero_shot_image", f"{PRODUCT}_clip_text_embed"} <= index
    assert f"{PRODUCT}_image_preprocess" not in index and f"{PRODUCT}_clip_tokenize" not in index


def test_image_embeddings_match_open_clip_on_real_images(triton, reference):
    images = list(valid_images().values())
    served = infer_images(triton, "image_embed", images).as_numpy("EMBEDDING")
    expected = _open_clip_image_embeddings(reference, images)
    assert served.shape == expected.shape and served.dtype == np.float32
    assert np.abs(served - expected).max() <= 1e-4
    assert (np.sum(served * expected, axis=1) >= 0.9999).all()
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)


def test_text_embeddings_match_open_clip_and_share_the_image_space(triton, reference):
    texts = ["a photo of a small red circle", "Un chat noir 🐈 sur la fenêtre", "我想查询", "word " * 200]
    served = infer_texts(triton, "clip_text_embed", texts).as_numpy("EMBEDDING")
    expected = _open_clip_text_embeddings(reference, texts)
    assert np.abs(served - expected).max() <= 1e-4
    image = infer_images(triton, "image_embed", [valid_images()["jpeg"]]).as_numpy("EMBEDDING")
    assert served.shape[1] == image.shape[1]


def test_raw_grpc_zero_shot_with_a_jpeg_returns_probabilities_in_label_order(triton, reference):
    jpeg = valid_images()["jpeg"]
    labels = ["red circle", "blue star", "green square", "yellow triangle"]
    probs = infer_images(triton, "zero_shot_image", [jpeg], labels).as_numpy("PROBS")
    assert probs.shape == (1, len(labels)) and probs.dtype == np.float32
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)

    image = _open_clip_image_embeddings(reference, [jpeg])[0]
    prompts = _open_clip_text_embeddings(reference, [t.format(l) for l in labels for t in reference.templates])
    classes = prompts.reshape(len(labels), len(reference.templates), -1).mean(1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    logits = reference.logit_scale * classes @ image
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probs[0], expected, atol=1e-4)

    reordered = infer_images(triton, "zero_shot_image", [jpeg], labels[::-1]).as_numpy("PROBS")
    np.testing.assert_allclose(reordered[0], probs[0][::-1], atol=1e-6)


def test_zero_shot_batch_of_images_each_get_their_row(triton):
    images = [valid_images()["jpeg"], valid_images()["png"], valid_images()["cmyk_jpeg"]]
    probs = infer_images(triton, "zero_shot_image", images).as_numpy("PROBS")
    assert probs.shape == (3, len(LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_an_image_answers_the_same_alone_or_in_a_batch(triton):
    images = [valid_images()[name] for name in ("jpeg", "one_pixel_png", "panorama_jpeg")]
    together = infer_images(triton, "image_embed", images).as_numpy("EMBEDDING")
    alone = np.concatenate([infer_images(triton, "image_embed", [i]).as_numpy("EMBEDDING") for i in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("pipeline", IMAGE_PIPELINES)
@pytest.mark.parametrize("name", list(valid_images()))
def test_odd_but_valid_images_get_an_answer(triton, pipeline, name):
    result = infer_images(triton, pipeline, [valid_images()[name]])
    output = "EMBEDDING" if pipeline == "image_embed" else "PROBS"
    assert np.isfinite(result.as_numpy(output)).all()


@pytest.mark.parametrize("pipeline", IMAGE_PIPELINES)
@pytest.mark.parametrize("name", list(broken_images()))
def test_broken_image_is_invalid_arg_naming_the_item_and_the_next_call_works(triton, pipeline, name):
    data, message = broken_images()[name]
    good = valid_images()["jpeg"]
    with pytest.raises(InferenceServerException, match=message.replace(r"IMAGE\[0\]", r"IMAGE\[1\]")) as error:
        infer_images(triton, pipeline, [good, data, good])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer_images(triton, pipeline, [good]).get_response().outputs


def test_exif_rotation_is_applied_by_the_server(triton):
    from PIL import Image

    rotated = valid_images()["exif_rotated_jpeg"]
    upright = encode(scene().transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)
    both = infer_images(triton, "image_embed", [rotated, upright]).as_numpy("EMBEDDING")
    plain = encode(scene(), "JPEG", quality=95)
    unrotated = infer_images(triton, "image_embed", [plain]).as_numpy("EMBEDDING")
    assert float(both[0] @ both[1]) > float(both[0] @ unrotated[0])


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], r"LABELS is empty"),
        (["cat", ""], r"LABELS\[1\] is empty"),
        (["cat", "   "], r"LABELS\[1\] is empty"),
        ([f"label {i}" for i in range(257)], r"LABELS has 257 labels"),
    ],
    ids=["no-labels", "empty-label", "blank-label", "too-many"],
)
def test_bad_labels_are_invalid_arg_naming_labels(triton, labels, message):
    image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(_bytes([valid_images()["jpeg"]]))
    names = np.array([[label.encode() for label in labels]], dtype=np.object_).reshape(1, len(labels))
    label_input = grpcclient.InferInput("LABELS", list(names.shape), "BYTES")
    label_input.set_data_from_numpy(names)
    with pytest.raises(InferenceServerException, match=message) as error:
        triton.infer("zero_shot_image", [image, label_input])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer_images(triton, "zero_shot_image", [valid_images()["jpeg"]]).as_numpy("PROBS").shape == (1, 3)


def test_non_utf8_label_and_text_are_invalid_arg(triton):
    with pytest.raises(InferenceServerException, match=r"TEXT\[0\] is not valid UTF-8"):
        infer_texts(triton, "clip_text_embed", [b"\xff\xfe"])
    with pytest.raises(InferenceServerException, match=r"TEXT\[0\] is empty"):
        infer_texts(triton, "clip_text_embed", [b" "])


def test_a_bad_image_does_not_fail_its_neighbours_in_a_dynamic_batch(triton):
    good, bad = valid_images()["jpeg"], broken_images()["truncated_jpeg"][0]
    payloads = [[bad] if i % 3 == 0 else [good] for i in range(18)]

    def call(images):
        try:
            return infer_images(triton, "image_embed", images).as_numpy("EMBEDDING").shape[0]
        except InferenceServerException as error:
            return error.status()

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(call, payloads))
    assert outcomes == ["StatusCode.INVALID_ARGUMENT" if i % 3 == 0 else 1 for i in range(18)]


def test_repeated_labels_are_answered_from_the_label_cache(triton):
    import time

    image = valid_images()["png"]
    labels = [f"novel label {i}" for i in range(40)]
    started = time.perf_counter()
    first = infer_images(triton, "zero_shot_image", [image], labels).as_numpy("PROBS")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    second = infer_images(triton, "zero_shot_image", [image], labels).as_numpy("PROBS")
    warm = time.perf_counter() - started
    np.testing.assert_allclose(first, second, atol=1e-7)
    print(f"40 new labels: {1000 * cold:.1f} ms, cached: {1000 * warm:.1f} ms")
