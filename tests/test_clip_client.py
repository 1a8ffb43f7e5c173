"""The typed client's CLIP methods against the real server: embed_images, embed_clip_texts, zero_shot."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lines_clip import PRODUCT, broken_images, scene, valid_images
from mmserve.client import InvalidInputError, ZeroShotResult

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts


def test_embed_images_accepts_paths_bytes_pil_and_arrays(client, tmp_path):
    picture = scene()
    path = tmp_path / "picture.png"
    picture.save(path)
    png = path.read_bytes()
    array = np.asarray(picture)
    embeddings = client.embed_images([path, str(path), png, Image.open(io.BytesIO(png)), array])
    assert embeddings.shape[0] == 5 and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embeddings[0], embeddings[2], atol=1e-6)  # the path sends the same bytes
    assert float(embeddings[0] @ embeddings[4]) > 0.99  # the array is re-encoded (JPEG q95): near, not equal
    single = client.embed_images(png)
    assert single.shape == (embeddings.shape[1],)
    batch = client.embed_images(np.stack([array, array]))  # an [N, H, W, C] array is a batch
    assert batch.shape == (2, embeddings.shape[1])


def test_embed_clip_texts_single_and_list(client):
    one = client.embed_clip_texts("a photo of a red circle")
    many = client.embed_clip_texts(["a photo of a red circle", "a blue star"])
    assert one.ndim == 1 and many.shape == (2, one.shape[0])
    np.testing.assert_allclose(one, many[0], atol=1e-6)
    assert client.embed_clip_texts([]).shape[0] == 0


def test_zero_shot_returns_a_typed_result_in_label_order(client):
    labels = ["red circle", "blue star", "green square"]
    result = client.zero_shot(valid_images()["jpeg"], labels)
    assert isinstance(result, ZeroShotResult)
    assert result.labels == tuple(labels) and result.probs.shape == (3,)
    assert result.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.label == labels[int(np.argmax(result.probs))] and result.score == pytest.approx(result.probs.max())
    results = client.zero_shot([valid_images()["jpeg"], scene()], labels)
    assert len(results) == 2 and all(r.labels == tuple(labels) for r in results)
    np.testing.assert_allclose(results[0].probs, result.probs, atol=1e-6)


def test_named_product_is_called_with_pipeline(client):
    default = client.embed_images(valid_images()["png"])
    product = client.embed_images(valid_images()["png"], pipeline=f"{PRODUCT}_image_embed")
    np.testing.assert_allclose(default, product, atol=1e-6)  # same checkpoint exported twice
    assert client.zero_shot(valid_images()["png"], ["a", "b"], pipeline=f"{PRODUCT}_zero_shot_image").probs.shape == (2,)


def test_bad_images_and_labels_raise_invalid_input(client):
    with pytest.raises(InvalidInputError, match=r"IMAGE\[1\] is not an image"):
        client.embed_images([valid_images()["jpeg"], broken_images()["text_file"][0]])
    with pytest.raises(InvalidInputError, match=r"IMAGE\[0\] is 20000x20000"):
        client.zero_shot(broken_images()["bomb_png_20000x20000"][0], ["a", "b"])
    with pytest.raises(InvalidInputError, match="labels is empty"):  # refused before sending
        client.zero_shot(valid_images()["jpeg"], [])
    with pytest.raises(InvalidInputError, match=r"LABELS\[1\] is empty"):
        client.zero_shot(valid_images()["jpeg"], ["cat", " "])
    with pytest.raises(InvalidInputError, match="empty bytes"):
        client.embed_images(b"")
    assert client.embed_images(valid_images()["jpeg"]).ndim == 1  # the server is fine afterwards
