"""The text pipelines over real gRPC, as a raw tritonclient sees them (the public contract)."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mmserve.pipelines import spec

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts

TEXT_PIPELINES = ["text_embed", "text_classify", "text_ner", "sentiment"]
GOOD = "Where is my parcel? I ordered it from Berlin last week."


def infer(triton, pipeline: str, texts: list[str | bytes]):
    items = np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=np.object_)
    text = grpcclient.InferInput("TEXT", list(items.shape), "BYTES")
    text.set_data_from_numpy(items)
    return triton.infer(pipeline, [text])


def test_every_pipeline_states_the_contract_names(triton):
    for pipeline, kind in [("text_embed", "text_embed"), ("text_classify", "text_classify"),
                           ("text_ner", "text_ner"), ("sentiment", "text_classify")]:
        metadata = triton.get_model_metadata(pipeline, as_json=True)
        contract = spec(kind)
        assert [i["name"] for i in metadata["inputs"]] == [t.name for t in contract.inputs]
        assert [o["name"] for o in metadata["outputs"]] == [t.name for t in contract.outputs]
        assert [i["datatype"] for i in metadata["inputs"]] == [t.triton_dtype for t in contract.inputs]


def test_classify_answers_probs_and_label_per_item(triton, text_checkpoints):
    labels = (text_checkpoints["classify"] / "labels.txt").read_text().split()
    result = infer(triton, "text_classify", [GOOD, "cancel my order please", "hi"])
    probs, label = result.as_numpy("PROBS"), result.as_numpy("LABEL")
    assert probs.shape == (3, len(labels)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert label.shape == (3, 1)
    assert [l.decode() for l in label[:, 0]] == [labels[i] for i in probs.argmax(axis=1)]


def test_product_matrix_serves_sentiment_beside_intents(triton, text_checkpoints):
    labels = (text_checkpoints["sentiment"] / "labels.txt").read_text().split()
    result = infer(triton, "sentiment", ["Shares of Contoso jumped 8% after profit beat estimates"])
    assert result.as_numpy("PROBS").shape == (1, len(labels)) == (1, 3)
    assert result.as_numpy("LABEL")[0, 0].decode() in labels
    index = {m["name"] for m in triton.get_model_repository_index(as_json=True)["models"]}
    assert "sentiment_tokenize" not in index  # same tokenizer: the pre-processing model is shared


def test_embeddings_are_normalised_and_match_the_checkpoint(triton, tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = [GOOD, "short", "Ein Satz auf Deutsch 🙂", "我想查询一下我的订单状态"]
    served = infer(triton, "text_embed", texts).as_numpy("EMBEDDING")
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_an_item_answers_the_same_alone_or_in_a_padded_batch(triton):
    texts = ["a", GOOD * 3, "medium length sentence here"]
    together = infer(triton, "text_embed", texts).as_numpy("EMBEDDING")
    alone = np.concatenate([infer(triton, "text_embed", [t]).as_numpy("EMBEDDING") for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_ner_returns_spans_with_offsets_into_the_input(triton):
    texts = ["Angela Merkel visited Siemens in Munich.", "nothing to see here", "北京 and São Paulo 🙂"]
    entities = infer(triton, "text_ner", texts).as_numpy("ENTITIES")
    assert entities.shape == (3, 1)
    for text, raw in zip(texts, entities[:, 0]):
        for entity in json.loads(raw):
            assert set(entity) == {"text", "label", "start", "end", "score"}
            assert 0 <= entity["start"] < entity["end"] <= len(text)
            assert text[entity["start"] : entity["end"]] == entity["text"]
            assert entity["label"] in {"PER", "ORG", "LOC", "MISC"} and 0 <= entity["score"] <= 1


@pytest.mark.parametrize("pipeline", TEXT_PIPELINES)
@pytest.mark.parametrize(
    "texts, message",
    [
        ([b""], r"TEXT\[0\] is empty"),
        ([b"   \n\t"], r"TEXT\[0\] is empty"),
        ([b"\xc3\x28 broken"], r"TEXT\[0\] is not valid UTF-8"),
        ([GOOD, b"\xff", GOOD], r"TEXT\[1\] is not valid UTF-8"),
    ],
    ids=["empty", "whitespace", "non-utf8", "mixed-batch"],
)
def test_bad_text_is_invalid_arg_naming_the_item_and_the_next_call_works(triton, pipeline, texts, message):
    with pytest.raises(InferenceServerException, match=message) as error:
        infer(triton, pipeline, texts)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer(triton, pipeline, [GOOD]).get_response().outputs


@pytest.mark.parametrize("pipeline", TEXT_PIPELINES)
def test_odd_but_valid_text_gets_an_answer(triton, pipeline):
    texts = ["x" * 100_000, "word " * 20_000, "🙂🚀🔥" * 50, "我想查询一下我的订单状态，谢谢！", "\u200b zero width"]
    result = infer(triton, pipeline, texts)
    first_output = result.get_response().outputs[0].name
    assert result.as_numpy(first_output).shape[0] == len(texts)


def test_a_bad_request_does_not_fail_its_neighbours_in_a_dynamic_batch(triton):
    payloads = [[GOOD] if i % 3 else [b"\xff"] for i in range(24)]

    def call(texts):
        try:
            return infer(triton, "text_classify", texts).as_numpy("LABEL").shape
        except InferenceServerException as error:
            return error.status()

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, payloads))
    assert outcomes == [(1, 1) if i % 3 else "StatusCode.INVALID_ARGUMENT" for i in range(24)]


def test_wrong_tensor_name_or_type_is_refused_by_triton(triton):
    wrong = grpcclient.InferInput("TXT", [1, 1], "BYTES")
    wrong.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as error:
        triton.infer("text_embed", [wrong])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer(triton, "text_embed", [GOOD]).as_numpy("EMBEDDING").shape[0] == 1
