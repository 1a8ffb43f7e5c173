"""results.json's typed schema (mmserve/bench/results.py) is checked, not decorative.

pydantic validates what the bench's own writers produce against the TypedDicts, with undeclared
keys refused; the writers' dataclasses and the schema name the same fields; every key that
analysis.py, report.py and plots.py read is declared. A whole results.json of a real run (one
layout with the runtime table, two layouts through the CLI, and the pre-layouts shape) is
validated in tests/test_bench.py, where its module-scoped runs already are.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import is_typeddict  # typing.is_typeddict misses typing_extensions' TypedDicts before 3.12

from mmserve.bench import results as schema

ROOT = Path(__file__).resolve().parent.parent
READERS = ("analysis.py", "report.py", "plots.py")
# Keys of maps the readers look up, not record fields: CpuMeter's process names (a PerfRow's `cpu`),
# and RuntimeRow.runtime values (analysis.int8_summary indexes the rows by runtime).
MAP_KEYS = {"perf_analyzer", "idle or other", "ORT fp32", "ORT INT8"}
PERF_CSV = (  # perf_analyzer's `-f` CSV: a served level, and a peer's (openai service kind: no server figures)
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "2,937.555,3,848,1,33,1020,208,7,1814,3093,3877,6685,2124,10,2096\n",
    "Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,"
    "p99 latency\n8,71.65,153,4,105872,143341,150061,157477\n",
)


def _typed_dicts() -> list[type]:
    return [c for c in vars(schema).values() if isinstance(c, type) and is_typeddict(c)]


def _keys(typed_dict: type) -> set[str]:
    return set(typing.get_type_hints(typed_dict))


def validate(type_: Any, value: Any) -> Any:
    """`value` as results.json holds it (a JSON round trip), validated strictly with no undeclared key."""
    for typed_dict in _typed_dicts():  # pydantic ignores extra keys of a TypedDict unless its config forbids them
        typed_dict.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return TypeAdapter(type_).validate_python(json.loads(json.dumps(value, default=str)), strict=True)


def validate_results(results: Any) -> None:
    """A whole results.json against BenchResults (tests/test_bench.py calls this on real runs)."""
    validate(schema.BenchResults, results)


@pytest.fixture(scope="module")
def text_embed_repository(tiny_bert: Path, tmp_path_factory) -> Path:
    from mmserve.exporters.text import export_text

    root = tmp_path_factory.mktemp("schema") / "repository"
    export_text(tiny_bert, root, layout="ensemble")
    return root


def test_the_writers_dataclasses_and_the_schema_name_the_same_fields():
    from mmserve.bench import inprocess, perf, runtimes
    from mmserve.repository_layout import THREADS_PARAMETER

    def fields(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert _keys(schema.PerfRow) == fields(perf.PerfRow)
    assert _keys(schema.BatchTiming) == fields(inprocess.BatchTiming)
    assert _keys(schema.RuntimeRow) == fields(runtimes.RuntimeRow)
    assert _keys(schema.Runtimes) == fields(runtimes.RuntimeTable)
    assert fields(perf.PerfSettings) <= _keys(schema.Settings)  # run_bench spreads them into `settings`
    assert THREADS_PARAMETER in _keys(schema.SchedulingStep)


def test_records_the_bench_writes_validate(text_embed_repository: Path, tmp_path: Path):
    from mmserve.bench.inprocess import measure_baseline
    from mmserve.bench.inputs import requests_for
    from mmserve.bench.perf import parse_csv
    from mmserve.bench.runtimes import RuntimeRow, RuntimeTable
    from mmserve.bench.server_stats import difference
    from mmserve.pipelines import Kind

    for index, (text, target) in enumerate(zip(PERF_CSV, ("triton-grpc", "infinity-torch"))):
        path = tmp_path / f"level{index}.csv"
        path.write_text(text)
        for row in parse_csv(path, "text_embed", target, "concurrency"):
            validate(schema.PerfRow, row.as_dict())
    counters = {"inference_count": 8.0, "execution_count": 2.0, "success_count": 8.0, "queue_ns": 8e5,
                "compute_input_ns": 8e4, "compute_infer_ns": 8e6, "compute_output_ns": 8e4}
    steps = difference({}, {"text_embed_encoder": counters})
    assert set(steps) == {"text_embed_encoder"}
    validate(dict[str, schema.StepStats], steps)
    baseline = measure_baseline(text_embed_repository, "text_embed", requests_for(Kind.TEXT_EMBED, 4),
                                batch_sizes=(1, 2), seconds=0.0, min_calls=2)
    checked = validate(schema.Baseline, baseline.as_dict())
    assert [t["batch"] for t in checked["timings"]] == [1, 2] and checked["encoders"] == ["text_embed_encoder"]
    table = RuntimeTable([RuntimeRow("text_embed_encoder", "text_embed", "ORT fp32", 1.0, 2.0, 4000.0, None, None,
                                     "ORT fp32")], ["torch eager skipped"])
    validate(schema.Runtimes, table.as_dict())


def test_the_schema_refuses_a_missing_figure_and_an_undeclared_key(tmp_path: Path):
    from mmserve.bench.perf import parse_csv

    path = tmp_path / "level.csv"
    path.write_text(PERF_CSV[0])
    (row,) = (r.as_dict() for r in parse_csv(path, "text_embed", "triton-grpc", "concurrency"))
    for broken in ({k: v for k, v in row.items() if k != "throughput"}, {**row, "throughput_s": 1.0},
                   {**row, "load": "2"}):
        with pytest.raises(ValidationError):
            validate(schema.PerfEntry, broken)
    validate(schema.PerfEntry, {k: row[k] for k in ("pipeline", "target", "mode", "load")} | {"error": "down"})


def _read_keys(source: str) -> set[str]:
    """String keys a module reads: `x["key"]` and `x.get("key", ...)`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            found.add(node.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def test_every_key_the_report_reads_is_declared_in_the_schema():
    declared = set().union(*(_keys(c) for c in _typed_dicts()))
    for module in READERS:
        read = _read_keys((ROOT / "mmserve" / "bench" / module).read_text(encoding="utf-8"))
        assert read, module
        undeclared = read - declared - MAP_KEYS
        assert not undeclared, f"mmserve/bench/{module} reads {sorted(undeclared)}: declare them in mmserve/bench/results.py"
