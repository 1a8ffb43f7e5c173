"""The kind table (mmserve/kinds.py) is complete, and every consumer covers every row."""
from __future__ import annotations

from mmserve.client import AsyncClient, Client
from mmserve.kinds import KINDS, AnswerShape, InputShape, Modality, by_modality, info
from mmserve.pipelines import AUDIO, EMBEDDING, ENTITIES, IMAGE, LABEL, LABELS, PROBS, SAMPLE_RATE, TEXT, Kind

# What each input/answer shape means in contract tensors: the table's rows must agree with
# the contract, so a consumer dispatching on shapes sends and reads the right tensors.
INPUT_TENSORS = {
    InputShape.TEXT: {TEXT.name},
    InputShape.IMAGE: {IMAGE.name},
    InputShape.IMAGE_AND_LABELS: {IMAGE.name, LABELS.name},
    InputShape.AUDIO: {AUDIO.name, SAMPLE_RATE.name},
}
ANSWER_TENSORS = {
    AnswerShape.EMBEDDING: {EMBEDDING.name},
    AnswerShape.CLASSIFICATION: {PROBS.name, LABEL.name},
    AnswerShape.ZERO_SHOT: {PROBS.name},
    AnswerShape.ENTITIES: {ENTITIES.name},
}


def test_every_kind_has_one_row_that_matches_the_contract() -> None:
    assert set(KINDS) == set(Kind)
    for kind, row in KINDS.items():
        assert row.kind is kind and info(kind.value) is row
        assert {t.name for t in row.spec.inputs} == INPUT_TENSORS[row.input], kind
        assert {t.name for t in row.spec.outputs} == ANSWER_TENSORS[row.answer], kind
        assert row.title and row.example and row.route.startswith("/v1/")


def test_every_row_names_a_method_of_both_clients() -> None:
    for row in KINDS.values():
        assert callable(getattr(Client, row.client_method, None)), row.client_method
        assert callable(getattr(AsyncClient, row.client_method, None)), row.client_method


def test_partners_are_mutual_and_share_the_embedding_answer() -> None:
    for row in KINDS.values():
        if row.partner is not None:
            partner = info(row.partner)
            assert partner.partner is row.kind
            assert row.answer is partner.answer is AnswerShape.EMBEDDING


def test_modalities_cover_the_table_in_order() -> None:
    grouped = [row.kind for _, rows in by_modality() for row in rows]
    assert sorted(grouped) == sorted(KINDS)
    assert [m for m, rows in by_modality() if rows] == list(Modality)
