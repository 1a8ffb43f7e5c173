"""Decode per-token BIO scores into entity spans with character offsets into the input."""
import json
from typing import Any

from mmserve.serving.runtime import answer_each, bytes_array, input_array, model_folder, output_tensor
from mmserve.serving.text import decode_entities, decode_texts, read_labels


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(model_folder(args).parent / "labels.txt")

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._entities)

    def _entities(self, request: Any) -> list[Any]:
        texts = decode_texts(input_array(request, "TEXT"), "TEXT")
        offsets = input_array(request, "offsets")
        word_ids = input_array(request, "word_ids")
        token_probs = input_array(request, "token_probs")
        documents = [
            json.dumps(
                decode_entities(text, offsets[i], word_ids[i], token_probs[i], self.labels),
                ensure_ascii=False,
            )
            for i, text in enumerate(texts)
        ]
        return [output_tensor("ENTITIES", bytes_array(documents))]
