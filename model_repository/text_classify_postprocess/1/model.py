"""Turn class probabilities into the label name, from this model's labels.txt."""
from typing import Any

from mmserve.serving.runtime import answer_each, bytes_array, input_array, model_folder, output_tensor
from mmserve.serving.text import read_labels, top_labels


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(model_folder(args).parent / "labels.txt")

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._label)

    def _label(self, request: Any) -> list[Any]:
        return [output_tensor("LABEL", bytes_array(top_labels(input_array(request, "probs"), self.labels)))]
