"""Decode encoded image bytes and pre-process them exactly as the checkpoint's open_clip transform.

EXIF orientation, transparency on white, CMYK / 16-bit / grayscale / palette images,
the first frame of animations; images above `max_pixels`, or files above
`max_image_bytes` (config parameters; defaults 40 megapixels, 32 MiB), are refused
before decoding. A bad image is INVALID_ARG naming it (IMAGE[i]); the rest of the batch
is answered. Logic: mmserve.serving.image.
"""
import json
from typing import Any

from PIL import Image

from mmserve.serving.image import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, ImageTransform, preprocess_images
from mmserve.serving.runtime import answer_each, input_array, model_parameters, output_tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        self.transform = ImageTransform.from_config(json.loads(parameters["preprocess"]))
        self.max_pixels = int(parameters.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.max_image_bytes = int(parameters.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES))
        # Pillow's own guard as a second line, beyond the explicit size check
        Image.MAX_IMAGE_PIXELS = self.max_pixels

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._preprocess)

    def _preprocess(self, request: Any) -> list[Any]:
        pixels = preprocess_images(
            input_array(request, "IMAGE"), self.transform, self.max_pixels, "IMAGE", self.max_image_bytes
        )
        return [output_tensor("pixel_values", pixels)]
