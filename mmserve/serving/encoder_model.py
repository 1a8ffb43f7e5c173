"""The Triton Python model behind every encoder of the cpu profile.

Each encoder folder's model.py is one line that re-exports this class, so all
encoders (text, CLIP towers, speech) share one runner and one behaviour.
"""
from __future__ import annotations

from typing import Any

from mmserve.serving.runtime import (
    OnnxRunner,
    RunnerSettings,
    answer_each,
    input_array,
    instance_count,
    model_folder,
    model_parameters,
    output_tensor,
)


class OnnxEncoderModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        settings = RunnerSettings.for_instances(
            instance_count(args), parameters.get("intra_op_threads"), parameters.get("allow_spinning")
        )
        self.runner = OnnxRunner(model_folder(args) / parameters.get("onnx_file", "model.onnx"), settings)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        try:
            feeds = [{name: input_array(r, name) for name in self.runner.input_names} for r in requests]
            answers = self.runner.run(feeds)
        except Exception:  # noqa: BLE001 - isolate the bad request, answer the rest
            return answer_each(requests, self._run_one)
        return [
            pb_utils.InferenceResponse(output_tensors=[output_tensor(n, v) for n, v in answer.items()])
            for answer in answers
        ]

    def _run_one(self, request: Any) -> list[Any]:
        feed = {name: input_array(request, name) for name in self.runner.input_names}
        (answer,) = self.runner.run([feed])
        return [output_tensor(n, v) for n, v in answer.items()]

    def finalize(self) -> None:
        self.runner = None
