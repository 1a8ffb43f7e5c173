"""Class probabilities -> PROBS (passed through) and LABEL, the most probable name in labels.txt.

The pipeline's outputs all come from this last step: Triton prunes an ensemble output that
also feeds a later step when a caller names a subset of the outputs (the reason is in
mmserve/exporters/classification.py). Shared by text and speech classifiers.
"""
from typing import Any

from mmserve.serving.runtime import answer_each, input_array, model_folder, output_tensor
from mmserve.serving.text import classification_outputs, read_labels


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(model_folder(args).parent / "labels.txt")

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._classify)

    def _classify(self, request: Any) -> list[Any]:
        outputs = classification_outputs(input_array(request, "probs"), self.labels, request.requested_output_names())
        return [output_tensor(name, value) for name, value in outputs.items()]
