"""Zero-shot classification: an image embedding and the request's own label names -> PROBS.

Each label becomes the checkpoint's prompt templates ("a photo of a {}."), runs
through the CLIP text tower (this folder's ONNX, the shared OnnxRunner), and the
prompt embeddings are averaged per label and normalised (open_clip's zero-shot
classifier). Label embeddings are kept in an LRU cache: production traffic asks
about the same labels again and again, so the text tower rarely runs. PROBS is
softmax(logit_scale * cosine) in the order of LABELS.

An empty label list, an empty or non-UTF-8 label, or more labels than
`max_labels` is INVALID_ARG naming LABELS. Logic: mmserve.serving.clip_text.
"""
import json
from typing import Any

import numpy as np

from mmserve.serving.clip_text import ClipTokenizer, LabelEmbeddings, decode_labels, zero_shot_probs
from mmserve.serving.runtime import (
    InputError,
    OnnxRunner,
    RunnerSettings,
    answer_each,
    input_array,
    instance_count,
    model_folder,
    model_parameters,
    output_tensor,
)

_TEXT_BATCH = 64


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        folder = model_folder(args)
        settings = json.loads((folder / parameters.get("clip_file", "clip.json")).read_text(encoding="utf-8"))
        self.runner = OnnxRunner(
            folder / parameters.get("onnx_file", "model.onnx"),
            RunnerSettings.for_instances(instance_count(args), parameters.get("intra_op_threads")),
        )
        self.tokenizer = ClipTokenizer(
            folder / parameters.get("tokenizer_file", "tokenizer.json"),
            context_length=int(parameters.get("context_length", settings["context_length"])),
            clean=settings.get("clean", "lower"),
        )
        self.logit_scale = float(parameters.get("logit_scale", settings["logit_scale"]))
        self.max_labels = int(parameters.get("max_labels", 256))
        self.labels = LabelEmbeddings(
            self._embed_prompts, settings["prompt_templates"], capacity=int(parameters.get("cache_size", 4096))
        )

    def _embed_prompts(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(prompts)
        chunks = [ids[start : start + _TEXT_BATCH] for start in range(0, len(ids), _TEXT_BATCH)]
        answers = self.runner.run([{"input_ids": chunk} for chunk in chunks])
        return np.concatenate([answer[self.runner.output_names[0]] for answer in answers])

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(requests, self._classify)

    def _classify(self, request: Any) -> list[Any]:
        images = input_array(request, "image_embeds")
        labels = input_array(request, "LABELS")
        if labels.ndim < 2 or labels.shape[0] != images.shape[0]:
            raise InputError(f"LABELS has shape {list(labels.shape)}; send one row of labels per image")
        probs = []
        for row in range(images.shape[0]):
            names = decode_labels(labels[row], "LABELS" if images.shape[0] == 1 else f"LABELS[{row}]", self.max_labels)
            probs.append(zero_shot_probs(images[row], self.labels(names), self.logit_scale))
        return [output_tensor("PROBS", np.stack(probs).astype(np.float32))]

    def finalize(self) -> None:
        self.runner = None
