"""Tokenise raw UTF-8 text for a BERT-family encoder, exactly as training did.

Shared by every text pipeline whose tokenizer.json and maximum length are the
same (text_embed, text_classify, text_ner, sentiment, ...). Over-long text is
truncated up to `max_text_bytes` per item (config parameter, default 1 MiB) and refused
beyond it; empty or non-UTF-8 text is INVALID_ARG.
"""
from typing import Any

from mmserve.serving.runtime import answer_each, input_array, model_folder, model_parameters, output_tensor
from mmserve.serving.text import DEFAULT_MAX_TEXT_BYTES, TextTokenizer, decode_texts


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        self.tokenizer = TextTokenizer(
            model_folder(args) / parameters.get("tokenizer_file", "tokenizer.json"),
            max_length=int(parameters["max_length"]),
        )
        self.max_text_bytes = int(parameters.get("max_text_bytes", DEFAULT_MAX_TEXT_BYTES))

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._tokenize)

    def _tokenize(self, request: Any) -> list[Any]:
        batch = self.tokenizer(decode_texts(input_array(request, "TEXT"), "TEXT", self.max_text_bytes))
        return [
            output_tensor("input_ids", batch.input_ids),
            output_tensor("attention_mask", batch.attention_mask),
            output_tensor("offsets", batch.offsets),
            output_tensor("word_ids", batch.word_ids),
        ]
