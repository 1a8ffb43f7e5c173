"""The kind table (mmserve/kinds.py) is complete, and every consumer covers every row."""
from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmserve.client import AsyncClient, Client
from mmserve.kinds import KINDS, AnswerShape, InputShape, KindInfo, Modality, by_modality, info
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


# --- every consumer covers every row ------------------------------------------------------


def _registries() -> list[tuple[str, Mapping[Any, Any], Callable[[KindInfo], Any], frozenset[Any]]]:
    """Each consumer's per-capability registry: (where, registry, the row's key, keys it leaves out on purpose)."""
    from mmserve import soak
    from mmserve.bench import inputs, runtimes, tune
    from mmserve.client import codec
    from mmserve.gateway import app as gateway_app
    from mmserve.gateway import inputs as gateway_inputs

    return [
        ("mmserve.client.codec.BATCHERS (requests per input shape)", codec.BATCHERS, _input, frozenset()),
        ("mmserve.client.codec.READERS (results per answer shape)", codec.READERS, _answer, frozenset()),
        ("mmserve.bench.inputs.GENERATORS (bench data per input shape)", inputs.GENERATORS, _input, frozenset()),
        ("mmserve.soak.CALL_ARGUMENTS (client call per input shape)", soak.CALL_ARGUMENTS, _input, frozenset()),
        ("mmserve.bench.tune.SWEEPS (--tune per input shape)", tune.SWEEPS, _input, tune.NOT_SWEPT),
        ("mmserve.bench.runtimes.TORCH_SOURCES (torch eager per modality)", runtimes.TORCH_SOURCES,
         _modality, runtimes.WITHOUT_TORCH_SOURCE),
        ("mmserve.gateway.inputs._DECODERS (a JSON body's items per input shape)", gateway_inputs._DECODERS,
         _input, frozenset()),
        ("mmserve.gateway.app.ANSWERS (a JSON answer per answer shape; embeddings: the OpenAI route)",
         gateway_app.ANSWERS, _answer, frozenset({AnswerShape.EMBEDDING})),
    ]


def _input(row: KindInfo) -> Any:
    return row.input


def _answer(row: KindInfo) -> Any:
    return row.answer


def _modality(row: KindInfo) -> Any:
    return row.modality


def missing_entries(rows: Iterable[KindInfo]) -> list[str]:
    """What each consumer lacks for these rows, one line per gap, naming where to add it."""
    gaps = []
    for row in rows:
        for where, registry, key, left_out in _registries():
            if key(row) not in registry and key(row) not in left_out:
                gaps.append(f"{row.name}: {where} has no entry for {key(row)!r}; add one (or list it as left out)")
    return gaps


def test_every_consumer_has_an_entry_for_every_row() -> None:
    assert missing_entries(KINDS.values()) == []


def test_a_row_of_a_new_shape_is_reported_by_every_consumer_of_that_shape() -> None:
    row = replace(info(Kind.TEXT_EMBED), input="video", answer="caption", modality="video")  # type: ignore[arg-type]
    gaps = missing_entries([row])
    wanted = [where for where, _, _, _ in _registries()]
    assert [gap.split(" has no entry")[0].removeprefix("text_embed: ") for gap in gaps] == wanted


# --- nobody else branches on a kind's name -------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TABLE_MODULES = {"mmserve/kinds.py", "mmserve/pipelines.py"}  # the contract and the kind table
KIND_NAMES = frozenset(kind.value for kind in Kind)


def _names_a_kind_member(node: ast.AST) -> bool:
    """``Kind.TEXT_NER`` (or its ``.value``)."""
    if isinstance(node, ast.Attribute) and node.attr == "value":
        node = node.value
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Kind"


def _kind_operand(node: ast.AST) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_kind_operand(element) for element in node.elts)
    return _names_a_kind_member(node)


def kind_branches(source: str) -> list[tuple[int, str]]:
    """(line, code) of each place that branches on a kind's name: a comparison with a Kind member,
    a comparison of something called kind with a kind's name, a ``case Kind.X``, a dict keyed by
    Kind members (a per-kind registry that belongs in the table, or keyed by a shape)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            by_member = any(_kind_operand(o) for o in operands)
            by_string = any(isinstance(o, ast.Constant) and o.value in KIND_NAMES for o in operands) and any(
                "kind" in ast.unparse(o).lower() for o in operands if not isinstance(o, ast.Constant)
            )
            if by_member or by_string:
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.match_case) and any(
            _names_a_kind_member(n) for n in ast.walk(node.pattern) if isinstance(n, ast.Attribute)
        ):
            found.append((node.pattern.lineno, ast.unparse(node.pattern)))
        elif isinstance(node, ast.Dict) and any(key is not None and _names_a_kind_member(key) for key in node.keys):
            found.append((node.lineno, ast.unparse(node)[:80]))
    return found


def _project_modules() -> list[Path]:
    return sorted(
        path for folder in ("mmserve", "client", "exporters", "training")
        for path in (ROOT / folder).rglob("*.py")
        if path.relative_to(ROOT).as_posix() not in TABLE_MODULES
    )


def test_no_module_outside_the_table_branches_on_a_kind_name() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {code}"
        for path in _project_modules()
        for line, code in kind_branches(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        "these branch on a kind's name; dispatch on the kind table's fields (mmserve/kinds.py: "
        "input, answer, modality, client_method, partner...) instead:\n" + "\n".join(offenders)
    )


def test_the_branch_finder_sees_each_form() -> None:
    source = (
        "if kind == Kind.TEXT_NER: pass\n"
        "if kind in (Kind.IMAGE_EMBED, Kind.CLIP_TEXT_EMBED): pass\n"
        "if product.kind != 'text_ner': pass\n"
        "TITLES = {Kind.TEXT_EMBED: 'x'}\n"
        "match kind:\n    case Kind.AUDIO_EMBED: pass\n"
        "if name == 'text_ner': pass\n"  # a product's name may equal a kind's: not a branch on the kind
        "if row.input is InputShape.TEXT: pass\n"
    )
    assert [line for line, _ in kind_branches(source)] == [1, 2, 3, 4, 6]
