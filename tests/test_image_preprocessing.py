"""Image decoding and open_clip pre-processing as the server runs them (mmserve.serving.image), no server."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lines_clip import broken_images, encode, scene, valid_images
from mmserve.serving.image import ImageTransform, decode_image, preprocess_images, to_rgb
from mmserve.serving.runtime import InputError


@pytest.mark.parametrize("size", [32, 224, (64, 96), (96, 64)], ids=str)
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_transform_equals_open_clip_inference_transform(size, resize_mode, interpolation):
    from open_clip.transform import image_transform

    reference = image_transform(size, is_train=False, resize_mode=resize_mode, interpolation=interpolation, fill_color=0)
    ours = ImageTransform.from_config({"size": size, "resize_mode": resize_mode, "interpolation": interpolation})
    rng = np.random.default_rng(0)
    for width, height in [(1, 1), (32, 32), (640, 480), (480, 640), (300, 17), (65, 63), (1000, 1000), (224, 224)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = reference(image).numpy()
        actual = ours(image)
        assert actual.shape == expected.shape and actual.dtype == np.float32
        assert np.abs(actual - expected).max() <= 1e-5, (width, height)


def test_transform_equals_open_clip_on_every_decoded_sample_and_custom_mean_std():
    from open_clip.transform import image_transform

    config = {"size": 48, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.3, 0.35), "interpolation": "bicubic"}
    reference = image_transform(48, is_train=False, mean=config["mean"], std=config["std"])
    ours = ImageTransform.from_config(config)
    for name, data in valid_images().items():
        decoded = decode_image(data)
        assert np.abs(ours(decoded) - reference(decoded).numpy()).max() <= 1e-5, name


def test_preprocessing_config_round_trips():
    transform = ImageTransform.from_config({"size": 224, "mean": [0.1, 0.2, 0.3], "std": 0.5, "resize_mode": "longest", "fill_color": 7})
    assert transform.std == (0.5, 0.5, 0.5) and transform.size == (224, 224)
    assert ImageTransform.from_config(transform.to_config()) == transform
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform.from_config({"size": 32, "resize_mode": "stretch"})


@pytest.mark.parametrize("name", list(valid_images()))
def test_every_odd_but_valid_image_decodes_to_rgb(name):
    image = decode_image(valid_images()[name], index=0)
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    pixels = preprocess_images(np.array([[valid_images()[name]]], dtype=np.object_), ImageTransform((32, 32)))
    assert pixels.shape == (1, 3, 32, 32) and np.isfinite(pixels).all()


def test_alpha_is_composited_on_white_not_dropped():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    decoded = np.asarray(decode_image(encode(rgba, "PNG")))
    assert tuple(decoded[1, 1]) == (255, 255, 255)  # transparent -> white background
    assert tuple(decoded[0, 0]) == (255, 0, 0)
    half = np.asarray(to_rgb(Image.new("LA", (2, 2), (0, 128))))
    assert abs(int(half[0, 0, 0]) - 127) <= 1  # black at 50% on white


def test_sixteen_bit_images_are_scaled_not_clipped():
    gray16 = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # mid-grey in 16 bits
    decoded = np.asarray(decode_image(encode(gray16, "PNG")))
    assert decoded.mean() == pytest.approx(128, abs=1)  # convert("RGB") alone would clip to 255
    rgb16 = np.asarray(decode_image(valid_images()["png_16bit_rgb"]))
    reference = np.asarray(scene())
    assert np.abs(rgb16.astype(int) - reference.astype(int)).max() <= 1


def test_exif_orientation_is_applied():
    picture = scene(64, 48)
    decoded = decode_image(valid_images()["exif_rotated_jpeg"])
    assert decoded.size == (48, 64)  # orientation 6: shown rotated a quarter turn clockwise
    expected = np.asarray(picture.transpose(Image.Transpose.ROTATE_270), dtype=int)
    assert np.abs(np.asarray(decoded, dtype=int) - expected).mean() < 4  # JPEG noise only


def test_an_animation_uses_the_first_frame_and_cmyk_converts():
    first = np.asarray(decode_image(valid_images()["animated_webp"]))
    assert first[..., 0].mean() > 150 and first[..., 2].mean() < 60  # red, not the blue second frame
    cmyk = np.asarray(decode_image(valid_images()["cmyk_jpeg"]), dtype=int)
    assert np.abs(cmyk - np.asarray(scene(), dtype=int)).mean() < 8


@pytest.mark.parametrize("name", list(broken_images()))
def test_broken_images_are_input_errors_naming_the_item(name):
    data, message = broken_images()[name]
    with pytest.raises(InputError, match=message):
        decode_image(data, index=0)
    batch = np.array([[encode(scene(), "PNG")], [data]], dtype=np.object_)
    with pytest.raises(InputError, match=message.replace(r"IMAGE\[0\]", r"IMAGE\[1\]")):
        preprocess_images(batch, ImageTransform((32, 32)))


def test_pixel_limit_is_configurable_and_checked_before_decoding():
    data = encode(scene(100, 100), "PNG")
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(InputError, match=r"IMAGE\[2\] is 100x100 .* limit"):
        decode_image(data, index=2, max_pixels=9_999)


def test_extreme_aspect_ratio_is_refused_rather_than_resized_to_gigapixels():
    strip = Image.new("RGB", (20_000, 1), (1, 2, 3))
    with pytest.raises(InputError, match=r"IMAGE\[0\] is 20000x1"):
        ImageTransform((224, 224))(strip)


def test_truncated_image_is_never_padded_silently():
    data = encode(scene(300, 300), "JPEG", quality=95)
    with pytest.raises(InputError, match="truncated or corrupt"):
        decode_image(data[: int(len(data) * 0.8)])
    assert decode_image(io.BytesIO(data).getvalue()).size == (300, 300)
