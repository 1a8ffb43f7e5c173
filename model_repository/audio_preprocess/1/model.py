"""Validate, resample and featurise PCM audio for a speech encoder, as its training did.

Shared by every speech pipeline whose feature extractor (preprocessor_config.json) and
limits are the same (audio_classify, audio_embed, ...). The rules -- sample rates
8..48 kHz, NaN/Inf and int16-as-float refused, mild overshoot clipped, a maximum clip
length -- are documented in mmserve/serving/audio.py; bad items are INVALID_ARG naming
AUDIO[i] or SAMPLE_RATE[i], and never affect other requests.
"""
from typing import Any

from mmserve.serving.audio import AudioPreprocessor, FeatureConfig
from mmserve.serving.runtime import answer_each, input_array, model_folder, model_parameters, output_tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        config = FeatureConfig.from_file(
            model_folder(args) / parameters.get("preprocessor_file", "preprocessor_config.json"),
            min_samples=int(parameters.get("min_samples", "400")),
        )
        self.preprocess = AudioPreprocessor(config, max_seconds=float(parameters["max_seconds"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._features)

    def _features(self, request: Any) -> list[Any]:
        features = self.preprocess(input_array(request, "AUDIO"), input_array(request, "SAMPLE_RATE"))
        return [output_tensor(name, value) for name, value in features.items()]
