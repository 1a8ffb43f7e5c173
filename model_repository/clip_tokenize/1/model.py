"""Tokenise raw UTF-8 text for a CLIP text tower exactly as open_clip's tokenizer does.

Shared by every CLIP product whose tokenizer.json, context length and cleaning are
the same. Over-long text is truncated (end token kept) up to `max_text_bytes` per item
(config parameter, default 1 MiB) and refused beyond it; empty or non-UTF-8 text is
INVALID_ARG. Logic: mmserve.serving.clip_text.
"""
from typing import Any

from mmserve.serving.clip_text import ClipTokenizer
from mmserve.serving.runtime import answer_each, input_array, model_folder, model_parameters, output_tensor
from mmserve.serving.text import DEFAULT_MAX_TEXT_BYTES, decode_texts


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        self.tokenizer = ClipTokenizer(
            model_folder(args) / parameters.get("tokenizer_file", "tokenizer.json"),
            context_length=int(parameters["context_length"]),
            clean=parameters.get("clean", "lower"),
        )
        self.max_text_bytes = int(parameters.get("max_text_bytes", DEFAULT_MAX_TEXT_BYTES))

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._tokenize)

    def _tokenize(self, request: Any) -> list[Any]:
        texts = decode_texts(input_array(request, "TEXT"), "TEXT", self.max_text_bytes)
        return [output_tensor("input_ids", self.tokenizer(texts))]
