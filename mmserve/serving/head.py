"""A classifier head product: a few KB of weights over an embedding product the server
already runs, so adding a classifier loads no second encoder.

The head product is one Python model with the public tensors of its kind (text_classify:
TEXT -> PROBS, LABEL; audio_classify: AUDIO, SAMPLE_RATE -> PROBS, LABEL). For each batch
it asks the encoder product (its config parameter `encoder`, e.g. text_embed) for the
embeddings through Triton's business-logic scripting (BLS: one `pb_utils.InferenceRequest`
for the whole batch), then applies softmax(normalise(E) @ W + b) in numpy. The encoder is
one model loaded once however many heads call it; each head adds one small stub process
(numpy, no onnxruntime session, no tokenizer). Why BLS rather than an ensemble that calls the
embedding product as its first step: docs/products.md ("How a head product is served").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmserve.pipelines import EMBEDDING
from mmserve.repository_layout import LABELS_FILE
from mmserve.serving.runtime import InputError, Outputs, model_folder, model_parameters, triton_response
from mmserve.serving.text import classification_outputs, read_labels

HEAD_FILE = "head.npz"  # weight [D, C], bias [C] (float32), read without pickle


def save_head(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, weight=np.asarray(weight, dtype=np.float32), bias=np.asarray(bias, dtype=np.float32))
    return path


def load_head(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        weight, bias = arrays["weight"].astype(np.float32), arrays["bias"].astype(np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[1],):
        raise ValueError(f"{path}: weight {weight.shape} and bias {bias.shape} do not make a linear head")
    return weight, bias


def head_probabilities(embeddings: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(normalise(E) @ W + b): what training computed (mmserve/products/head.py)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != weight.shape[0]:
        raise ValueError(f"the encoder answered embeddings of shape {embeddings.shape}; this head reads "
                         f"{weight.shape[0]} dimensions: it was trained on another encoder")
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    logits = unit @ weight + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class EncoderCallError(RuntimeError):
    """The encoder product answered with an error (or is not loaded)."""

    def __init__(self, message: str, invalid: bool) -> None:
        super().__init__(message)
        self.invalid = invalid


class HeadModel:
    """The Triton Python model of a head product (its model.py is one line importing it)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = model_parameters(args)
        self.name = args.get("model_name", "head")
        self.encoder = parameters["encoder"]
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.weight, self.bias = load_head(model_folder(args) / parameters.get("head_file", HEAD_FILE))
        self.labels = read_labels(model_folder(args).parent / LABELS_FILE)
        if len(self.labels) != self.weight.shape[1]:
            raise ValueError(f"labels.txt names {len(self.labels)} labels but the head scores {self.weight.shape[1]}")

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [{name: _input(request, name) for name in self.input_names} for request in requests]
        try:
            embeddings = self._embed_batch(inputs)
        except EncoderCallError:  # one bad request fails alone: ask again one by one
            embeddings = [self._embed_one(one) for one in inputs]
        except Exception as error:  # noqa: BLE001 - a server never crashes on a batch
            embeddings = [error] * len(requests)
        return [triton_response(self._answer(e, r.requested_output_names())) for e, r in zip(embeddings, requests)]

    def _answer(self, embedding: np.ndarray | Exception, requested: Sequence[str]) -> Outputs | Exception:
        if isinstance(embedding, EncoderCallError):
            return InputError(str(embedding)) if embedding.invalid else RuntimeError(str(embedding))
        if isinstance(embedding, Exception):
            return embedding
        try:
            return classification_outputs(head_probabilities(embedding, self.weight, self.bias), self.labels, requested)
        except Exception as error:  # noqa: BLE001
            return error

    def _embed_batch(self, inputs: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        sizes = [len(next(iter(one.values()))) for one in inputs]
        if len(inputs) == 1:
            return [self._call({n: inputs[0][n] for n in self.input_names})]
        stacked = {name: _stack([one[name] for one in inputs]) for name in self.input_names}
        embeddings = self._call(stacked)
        return list(np.split(embeddings, np.cumsum(sizes)[:-1]))

    def _embed_one(self, one: dict[str, np.ndarray]) -> np.ndarray | Exception:
        try:
            return self._call(one)
        except Exception as error:  # noqa: BLE001 - this request's own error
            return error

    def _call(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """The encoder product's EMBEDDING for these inputs, through Triton (BLS)."""
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        request = pb_utils.InferenceRequest(
            model_name=self.encoder,
            requested_output_names=[EMBEDDING.name],
            inputs=[pb_utils.Tensor(name, value) for name, value in tensors.items()],
        )
        response = request.exec()
        if response.has_error():
            error = response.error()
            message = error.message()
            code = error.code() if hasattr(error, "code") else None
            if "unknown model" in message or "not found" in message or "not ready" in message.lower():
                raise EncoderCallError(
                    f"{self.name} is a head over the encoder product {self.encoder}, which the server does not serve "
                    f"now ({message}); load it (`mmserve load {self.encoder}`)", invalid=False)
            raise EncoderCallError(message, invalid=code == pb_utils.TritonError.INVALID_ARG)
        return pb_utils.get_output_tensor_by_name(response, EMBEDDING.name).as_numpy()

    def finalize(self) -> None:
        self.weight = self.bias = None


def _input(request: Any, name: str) -> np.ndarray:
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InputError(f"input {name} is missing")
    return tensor.as_numpy()


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Requests' inputs as one batch; ragged ones (audio of different lengths) zero-padded --
    which would change an audio embedding, so the caller only stacks equal shapes (see HeadModel)."""
    if all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    raise EncoderCallError("requests of different shapes", invalid=False)


class HeadStepModel:
    """The same head as an ensemble step (EMBEDDING -> PROBS, LABEL), for the layout measured
    against BLS in docs/products.md: an ensemble whose first step is the embedding product."""

    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        self.weight, self.bias = load_head(model_folder(args) / parameters.get("head_file", HEAD_FILE))
        self.labels = read_labels(model_folder(args).parent / LABELS_FILE)

    def execute(self, requests: list[Any]) -> list[Any]:
        results: list[Outputs | Exception] = []
        for request in requests:
            try:
                embeddings = _input(request, EMBEDDING.name)
                probs = head_probabilities(embeddings, self.weight, self.bias)
                results.append(classification_outputs(probs, self.labels, request.requested_output_names()))
            except Exception as error:  # noqa: BLE001 - a server never crashes on a request
                results.append(error)
        return [triton_response(result) for result in results]
