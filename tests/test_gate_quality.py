"""Issue 20: the gate judges quality against a baseline, fails a report with nothing measured, and model cards of
variants the run no longer has are removed."""

from __future__ import annotations

import pytest

from compress import compare, gate
from tests.test_gate import make_report, rows


@pytest.mark.parametrize(
    ("old", "new", "budget", "regression"),
    [
        (0.99, 0.50, None, True),  # the edit: 0.99 -> 0.50, the recipe's budget (0.02)
        (0.99, 0.98, None, False),  # within the budget
        (0.99, 0.98, 0.005, True),  # beyond --max-quality-regression 0.005
        (0.99, 0.999, None, False),  # better
    ],
)
def test_compare_flags_a_quality_drop_beyond_the_budget(tmp_path, old, new, budget, regression):
    before = make_report(tmp_path / "old", rows(int8_cosine=old))
    after = make_report(tmp_path / "new", rows(int8_cosine=new))
    entries = {e["row"]["variant"]: e for e in compare.compare(after, before, 0.10, budget)
               if e["row"].get("provider") == "CPUExecutionProvider"}
    int8 = entries["teacher.int8-dynamic.onnx"]
    assert int8["quality_regression"] is regression
    assert int8["quality_delta"] == pytest.approx(new - old)
    assert entries["teacher.onnx"]["quality_regression"] is False


def test_gate_fails_a_quality_regression_against_the_baseline(tmp_path):
    before = make_report(tmp_path / "old", rows(int8_cosine=0.99))
    after = make_report(tmp_path / "new", rows(int8_cosine=0.50))
    result = gate.gate(after, before, max_quality_drop=0.5)  # int8 still qualifies: the regression alone fails
    failed = [c for c in result["checks"] if not c["passed"]]
    assert not result["passed"] and [c["gate"] for c in failed] == ["max-quality-regression"]
    assert failed[0]["message"].startswith("max-quality-regression: teacher.int8-dynamic.onnx onnxruntime/CPU "
                                           "b1/s128/t1: cosine 0.5000 vs 0.9900 baseline, -0.4900 beyond -0.02")
    assert gate.gate(before, before)["passed"]


@pytest.mark.parametrize(
    ("bench_rows", "expected"),
    [
        ([], "measured: the report has no rows (rows: [])"),
        ([r for r in rows() if r["status"] != "ok"], "measured: no row of the report was measured (status: "
                                                      "unavailable)"),
    ],
)
def test_gate_fails_a_report_with_nothing_measured(tmp_path, bench_rows, expected):
    result = gate.gate(make_report(tmp_path, bench_rows))
    assert not result["passed"]
    assert result["checks"][0]["message"].startswith(expected)


def test_remove_stale_cards_removes_only_cards_compress_wrote(tmp_path):
    from compress.report.model_card import remove_stale_cards

    cards = tmp_path / "model_cards"
    cards.mkdir()
    ours = "---\nlicense: apache-2.0\n---\n\n# {n}\n\nAn ONNX bundle made by `compress` run `demo` ...\n"
    (cards / "teacher.onnx.md").write_text(ours.format(n="teacher.onnx"))
    (cards / "teacher.int4-weight.onnx.md").write_text(ours.format(n="teacher.int4-weight.onnx"))
    (cards / "notes.md").write_text("# my notes\n")
    assert remove_stale_cards(cards, ["teacher.onnx"]) == ["teacher.int4-weight.onnx"]
    assert sorted(p.name for p in cards.iterdir()) == ["notes.md", "teacher.onnx.md"]
