"""Image decoding and CLIP pre-processing run inside the server: pure functions, unit-tested.

`decode_image` turns the bytes a client sent into an RGB picture the way a
photo app shows it (EXIF orientation applied, transparency composited on
white, CMYK / 16-bit / grayscale / palette images converted, the first frame
of an animation), refusing what cannot be decoded or would not fit in memory
with an `InputError` that names the item ("IMAGE[3] ...").

`ImageTransform` is open_clip's inference transform (torchvision Resize ->
CenterCrop / CenterCropOrPad -> ToTensor -> Normalize, as built by
`open_clip.transform.image_transform(is_train=False)`) re-done with Pillow and
numpy, so the server needs neither torch nor torchvision. The resizing calls
Pillow with the same sizes and filter torchvision passes, so pixels agree
exactly; tests hold it to 1e-5 against open_clip's own transform.

Imported inside Triton's Python stub: numpy and Pillow only.
"""
from __future__ import annotations

import io
import json
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mmserve.pipelines import IMAGE, PIXEL_VALUES
from mmserve.serving.runtime import InputError, Outputs, PythonStep, input_array, model_parameters

# A 40-megapixel photo is about the largest a phone takes; a decoded RGB image that
# size is 120 MB. Anything larger is refused before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 40_000_000
# The formats the contract names (DESIGN.md: IMAGE is encoded JPEG/PNG/WebP/BMP). Pillow
# opens nothing else: EPS (Ghostscript), PSD, FITS, TIFF and the rest of its decoders, each
# with its own advisories, are never reached by untrusted bytes.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
# Largest encoded IMAGE item (config parameter `max_image_bytes`): a 40-megapixel JPEG is
# 10-20 MB. Checked before the header is read, so an over-size upload costs nothing more.
DEFAULT_MAX_IMAGE_BYTES = 32 << 20
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}

# Truncated files are refused, not padded with grey (Pillow's default already; made explicit).
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(
    data: bytes, index: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS, input_name: str = IMAGE.name,
    max_bytes: int | None = None,
) -> Image.Image:
    """Encoded bytes -> an upright RGB PIL image, or InputError naming `input_name[index]`.

    `max_bytes`: refuse a file larger than this (None: no limit, e.g. for training data;
    the server's pre-processing passes its `max_image_bytes`)."""
    where = f"{input_name}[{index}]"
    if not data:
        raise InputError(f"{where} is empty; send the encoded image file (JPEG, PNG, WebP or BMP)")
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError(
            f"{where} is {len(data):,} bytes, above this server's limit of {max_bytes:,} bytes per image; "
            "resize it or send it as JPEG/WebP (the model sees a small crop anyway)"
        )
    try:
        image = _open_header(data)
    except UnidentifiedImageError:
        raise InputError(
            f"{where} is not an image in an accepted format ({len(data)} bytes starting {data[:8]!r}); "
            "send the encoded image file as JPEG, PNG, WebP or BMP"
        ) from None
    except Image.DecompressionBombError as error:
        raise InputError(f"{where} is too large to decode: {error}") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is the input's fault
        raise InputError(f"{where} is truncated or corrupt ({error or type(error).__name__})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError(f"{where} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"{where} is {width}x{height} = {width * height / 1e6:.0f} megapixels, above this server's limit of "
            f"{max_pixels / 1e6:.0f}; resize it before sending (the model sees a small crop anyway)"
        )
    try:
        image.seek(0)  # animations: the first frame
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return to_rgb(image)
    except Exception as error:  # noqa: BLE001 - truncated/corrupt data surfaces here
        detail = str(error) or type(error).__name__
        raise InputError(f"{where} is truncated or corrupt ({image.format or 'unknown format'}: {detail})") from None


_OPEN_LOCK = threading.Lock()


def _open_header(data: bytes) -> Image.Image:
    """Image.open (which reads only the header) with Pillow's own bomb guard lifted for the call.

    The guard raises without saying the image's size; `decode_image` checks the size
    itself right after, against the server's limit, before any pixel is decoded.
    Pillow's later checks (some decoders repeat them) use the process-wide limit.
    """
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white, 16-bit scaled to 8-bit."""
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        image = _to_8bit_gray(image)
    if image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _WITH_ALPHA:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit int / float) grayscale -> 8-bit, scaling the full range instead of clipping."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
    elif image.mode == "I" and values.size and values.max() <= 255:
        top = 255.0
    else:
        top = 65535.0
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


@dataclass(frozen=True)
class ImageTransform:
    """open_clip's inference pre-processing for one checkpoint (its `preprocess_cfg`)."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear", "random"):
            raise ValueError(f"interpolation {self.interpolation!r}: expected bicubic or bilinear")
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r}: expected shortest, longest or squash")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ImageTransform":
        """From open_clip's preprocess_cfg dict (size, mean, std, interpolation, resize_mode, fill_color)."""
        size = config["size"]
        size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        mean, std = config.get("mean", OPENAI_MEAN), config.get("std", OPENAI_STD)
        mean = tuple(mean) if isinstance(mean, (list, tuple)) else (mean,) * 3
        std = tuple(std) if isinstance(std, (list, tuple)) else (std,) * 3
        return cls(
            size=size,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            interpolation=config.get("interpolation") or "bicubic",
            resize_mode=config.get("resize_mode") or "shortest",
            fill_color=int(config.get("fill_color", 0) or 0),
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "size": list(self.size), "mean": list(self.mean), "std": list(self.std),
            "interpolation": self.interpolation, "resize_mode": self.resize_mode, "fill_color": self.fill_color,
        }

    @property
    def _resample(self) -> int:
        # open_clip maps anything but "bilinear" (incl. "random") to bicubic at inference
        return _RESAMPLE["bilinear"] if self.interpolation == "bilinear" else _RESAMPLE["bicubic"]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image is resized to before cropping, as torchvision computes it."""
        target_h, target_w = self.size
        if self.resize_mode == "squash":
            return target_w, target_h
        if self.resize_mode == "shortest" and target_h == target_w:
            # torchvision Resize(int): shorter side -> size, longer side truncated
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = target_h, int(target_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        # open_clip ResizeKeepRatio: ratio of the shortest (or longest) edge, rounded
        ratio_h, ratio_w = height / target_h, width / target_w
        ratio = max(ratio_h, ratio_w) if self.resize_mode == "longest" else min(ratio_h, ratio_w)
        # at least one pixel: open_clip itself fails on e.g. 3x500 with resize_mode="longest"
        return max(1, round(width / ratio)), max(1, round(height / ratio))

    def __call__(self, image: Image.Image, index: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS, input_name: str = IMAGE.name) -> np.ndarray:
        """RGB PIL image -> float32 [3, H, W], normalised."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        new_w, new_h = self.resized_size(width, height)
        if new_w * new_h > max(max_pixels, 4 * self.size[0] * self.size[1]):
            raise InputError(
                f"{input_name}[{index}] is {width}x{height}: resizing its short side to {min(self.size)} would make "
                f"{new_w}x{new_h}; crop such extreme aspect ratios before sending"
            )
        if (new_w, new_h) != (width, height):
            resample = self._resample
            if self.resize_mode == "shortest" and self.size[0] != self.size[1]:
                # open_clip builds this ResizeKeepRatio without the interpolation argument
                resample = _RESAMPLE["bicubic"]
            image = image.resize((new_w, new_h), resample)
        pixels = np.asarray(image, dtype=np.uint8)
        if self.resize_mode != "squash":
            pixels = _center_crop_or_pad(pixels, self.size, self.fill_color if self.resize_mode == "longest" else 0)
        scaled = pixels.astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def _center_crop_or_pad(pixels: np.ndarray, size: tuple[int, int], fill: int) -> np.ndarray:
    """torchvision center_crop / open_clip center_crop_or_pad on an [H, W, 3] array."""
    crop_h, crop_w = size
    height, width = pixels.shape[:2]
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        pixels = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), constant_values=fill)
        height, width = pixels.shape[:2]
        if (height, width) == (crop_h, crop_w):
            return pixels
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return pixels[top : top + crop_h, left : left + crop_w]


def preprocess_images(
    items: np.ndarray, transform: ImageTransform, max_pixels: int = DEFAULT_MAX_PIXELS, input_name: str = IMAGE.name,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> np.ndarray:
    """A BYTES [N, 1] (or [N]) array of encoded images -> float32 [N, 3, H, W]."""
    flat = np.asarray(items, dtype=np.object_).reshape(-1)
    if flat.size == 0:
        raise InputError(f"{input_name} holds no images")
    out = np.empty((flat.size, 3, *transform.size), dtype=np.float32)
    for index, item in enumerate(flat):
        data = item.encode("latin-1") if isinstance(item, str) else bytes(item)
        image = decode_image(data, index, max_pixels, input_name, max_bytes)
        out[index] = transform(image, index, max_pixels, input_name)
    return out



# ---- the Triton Python model (the exported model.py is one line importing it) ----


class ImagePreprocessModel(PythonStep):
    """`image_preprocess`: encoded IMAGE bytes -> pixels, exactly as the checkpoint's open_clip transform.

    EXIF orientation, transparency on white, CMYK / 16-bit / grayscale / palette images, the
    first frame of animations; images above `max_pixels`, or files above `max_image_bytes`
    (config parameters; defaults 40 megapixels, 32 MiB), are refused before decoding. A bad
    image is INVALID_ARG naming it (IMAGE[i]); the rest of the batch is answered.
    """

    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        self.transform = ImageTransform.from_config(json.loads(parameters["preprocess"]))
        self.max_pixels = int(parameters.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.max_image_bytes = int(parameters.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES))
        # Pillow's own guard as a second line, beyond the explicit size check
        Image.MAX_IMAGE_PIXELS = self.max_pixels

    def answer(self, request: Any) -> Outputs:
        pixels = preprocess_images(
            input_array(request, IMAGE.name), self.transform, self.max_pixels, IMAGE.name, self.max_image_bytes
        )
        return {PIXEL_VALUES: pixels}
