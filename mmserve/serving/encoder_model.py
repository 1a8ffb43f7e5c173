"""The Triton Python model behind every encoder of the cpu profile.

Each encoder folder's model.py is one line that re-exports this class, so all
encoders (text, CLIP towers, speech) share one runner and one behaviour.
"""
from __future__ import annotations

from typing import Any, Sequence

from mmserve.repository_layout import OnnxStepParameters

from mmserve.serving.runtime import (
    OnnxRunner,
    Outputs,
    PythonStep,
    RunnerSettings,
    input_array,
    instance_count,
    model_folder,
    model_parameters,
    session_providers,
)


class OnnxEncoderModel(PythonStep):
    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        step = OnnxStepParameters.from_values(parameters)
        settings = RunnerSettings.for_instances(
            instance_count(args), _text(step.intra_op_threads), None if step.allow_spinning is None else str(int(step.allow_spinning))
        )
        self.runner = OnnxRunner(model_folder(args) / step.onnx_file, settings, session_providers(parameters))

    def answer_batch(self, requests: Sequence[Any]) -> list[Outputs | Exception]:
        """The whole batch in one onnxruntime call; request by request only when that fails,
        so one bad request gets its own error and the others their answers."""
        try:
            return list(self.runner.run([self._feed(request) for request in requests]))
        except Exception:  # noqa: BLE001 - isolate the bad request, answer the rest
            return super().answer_batch(requests)

    def answer(self, request: Any) -> Outputs:
        (outputs,) = self.runner.run([self._feed(request)])
        return outputs

    def _feed(self, request: Any) -> Outputs:
        return {name: input_array(request, name) for name in self.runner.input_names}

    def finalize(self) -> None:
        self.runner = None


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)
