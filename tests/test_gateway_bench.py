"""`mmserve bench --gateway`'s pure parts: its section of docs/benchmarks.md is replaced in
place (the rest of the file untouched) or appended, and CPU time is read per process tree.
The measurement itself runs on a quiet machine (docs/benchmarks.md), not in the suite."""
from __future__ import annotations

import os

from mmserve.bench.gateway import SECTION_END, SECTION_START, Row, Side, markdown, tree_cpu_s, write_section


def _rows() -> list[Row]:
    fast, slow = Side([1.0, 1.2, 1.1], 1.0, {"bench": 0.5}), Side([1.6, 1.9, 1.7], 1.0, {"bench": 0.2, "gateway": 0.9})
    return [Row("text_embed", 1, fast, slow), Row("text_embed", 8, Side([5.0] * 80, 1.0), Side([5.5] * 75, 1.0))]


def test_the_section_is_appended_then_replaced_in_place(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nthe rest of the report\n")
    write_section(docs, markdown(_rows(), {"http round trip ms": 0.2}, "mmserve bench --gateway", (1.0, 1.5)))
    first = docs.read_text()
    assert first.startswith("# Benchmarks\n\nthe rest of the report\n") and first.count(SECTION_START) == 1
    assert "| text_embed | 1 | 1.10 | 1.70 | +0.60 |" in first and "bench 0.20 + gateway 0.90" in first
    assert "p50 added +0.60 ms (target <= 1 ms): **met**" in first
    assert "throughput x0.94 (target >= 0.9x): **met**" in first
    docs.write_text(first + "\n## A later section\n")
    write_section(docs, markdown(_rows()[:1], {}, "mmserve bench --gateway", (1.0, 1.5)))
    second = docs.read_text()
    assert second.count(SECTION_START) == second.count(SECTION_END) == 1 and second.endswith("## A later section\n")
    assert "| text_embed | 8 |" not in second


def test_cpu_time_of_a_process_tree():
    before = tree_cpu_s(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert tree_cpu_s(os.getpid()) > before
