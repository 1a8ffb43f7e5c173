"""The CLIP line's part of the test repository: a tiny open_clip model trained for one epoch
on generated shapes by the real training loop, exported by the real exporter.

Tiny (1 layer, 32 wide, 32-pixel images) so it costs seconds; the real-size run is the demo.
"""
from __future__ import annotations

import json
from pathlib import Path

# An architecture JSON in open_clip's model_configs format: exercises --arch FILE.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# A product exported beside the default: shares image_preprocess and clip_tokenize.
PRODUCT = "catalog"


def tiny_clip_checkpoint(workdir: Path) -> Path:
    """Train (once per session folder) and return the tiny checkpoint."""
    from mmserve.training.clip import ClipTrainConfig, train_clip
    from mmserve.training.clip_shapes import write_dataset

    out = workdir / "ckpt" / "tiny-clip"
    if (out / "metrics.json").exists():
        return out
    data = write_dataset(workdir / "shapes", n_train=64, n_val=24, n_test=24, n_unseen=12, image_size=40)
    arch = workdir / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_CLIP_CONFIG))
    train_clip(ClipTrainConfig(
        arch=str(arch), data=str(data.train), val_data=str(data.val), classes=str(data.classes),
        out=str(out), epochs=1, batch_size=32, lr=1e-3,
    ))
    return out


def build_clip_line(workdir: Path, repository: Path, **options) -> None:
    from mmserve.exporters.clip import export_clip

    checkpoint = tiny_clip_checkpoint(workdir)
    summaries = [
        export_clip(checkpoint, repository, **options).summary(),
        export_clip(checkpoint, repository, name=PRODUCT, **options).summary(),
    ]
    (workdir / f"clip-export-{options.get('layout', 'default')}.txt").write_text("\n".join(summaries))


# --- images every CLIP test sends: odd-but-valid ones and broken ones ---------------------


def encode(image, fmt: str, **options) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG written by hand: for what Pillow cannot write (16-bit RGB) or should not decode (bombs)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def scene(width: int = 64, height: int = 48):
    """An RGB test picture with structure in both axes (so rotations and crops show)."""
    import numpy as np
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), np.full_like(xx, 90)], -1)
    image = Image.fromarray(pixels.astype(np.uint8))
    ImageDraw.Draw(image).ellipse([width * 0.2, height * 0.2, width * 0.6, height * 0.7], fill=(230, 30, 30))
    return image


def valid_images() -> dict[str, bytes]:
    """Encoded images each pipeline must answer: name -> bytes."""
    import numpy as np
    from PIL import Image

    picture = scene()
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(picture.size))
    palette = picture.convert("P", palette=Image.ADAPTIVE, colors=16)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    gray16 = Image.fromarray((np.asarray(picture.convert("L"), dtype=np.uint16) * 257))
    rgb16 = np.asarray(picture, dtype=">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((200, 20, 20), (20, 20, 200))]
    return {
        "jpeg": encode(picture, "JPEG", quality=90),
        "png": encode(picture, "PNG"),
        "webp": encode(picture, "WEBP"),
        "bmp": encode(picture, "BMP"),
        "grayscale_jpeg": encode(picture.convert("L"), "JPEG"),
        "cmyk_jpeg": encode(picture.convert("CMYK"), "JPEG"),
        "png_16bit_gray": encode(gray16, "PNG"),
        "png_16bit_rgb": png_bytes(picture.width, picture.height, 16, 2, rows),
        "rgba_png": encode(rgba, "PNG"),
        "la_png": encode(rgba.convert("LA"), "PNG"),
        "palette_png": encode(palette, "PNG"),
        "palette_transparent_png": encode(transparent_palette, "PNG", transparency=0),
        "animated_webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0,
                                lossless=True),
        "exif_rotated_jpeg": encode(picture, "JPEG", quality=95, exif=exif),
        "one_pixel_png": encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "panorama_jpeg": encode(scene(600, 60), "JPEG"),
    }


def broken_images() -> dict[str, tuple[bytes, str]]:
    """Encoded inputs each pipeline must refuse with INVALID_ARG: name -> (bytes, message pattern)."""
    picture = scene(200, 150)
    jpeg, png = encode(picture, "JPEG", quality=90), encode(picture, "PNG")
    return {
        "empty": (b"", r"IMAGE\[0\] is empty"),
        "text_file": (b"name,caption\ncat.jpg,a cat\n", r"IMAGE\[0\] is not an image"),
        # formats outside the contract (JPEG/PNG/WebP/BMP) are never opened (issue 18)
        "tiff": (encode(picture, "TIFF"), r"IMAGE\[0\] is not an image in an accepted format"),
        "gif": (encode(picture, "GIF"), r"IMAGE\[0\] is not an image in an accepted format"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], r"IMAGE\[0\] .*(truncated|corrupt)"),
        "truncated_png": (png[: len(png) // 2], r"IMAGE\[0\] .*(truncated|corrupt)"),
        "bomb_png_20000x20000": (png_bytes(20000, 20000, 8, 2, b"\x00" * 64), r"IMAGE\[0\] is 20000x20000"),
    }
