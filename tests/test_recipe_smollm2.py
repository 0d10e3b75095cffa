"""recipes/smollm2-distill.yaml, shrunk: the real SmolLM2 teacher from its GGUF file, end to end.

In its own file so that pytest-xdist (--dist loadfile) runs it beside tests/test_recipes.py, not after it.
"""

from __future__ import annotations

import json

import pytest
from test_recipes import run_shrunk


@pytest.mark.slow  # minutes: the real 135M teacher is converted, generates, and is exported and benched
def test_smollm2_distill_generates_distills_exports_int4_and_benches(tmp_path):
    run_dir = tmp_path / "smollm2"
    run_shrunk("smollm2-distill.yaml", run_dir)
    provenance = json.loads((run_dir / "artifacts" / "generated" / "provenance.json").read_text())
    assert provenance["completions"] == 24 and provenance["teacher"]["license"] == "apache-2.0"
    assert json.loads((run_dir / "artifacts" / "student" / "config.json").read_text())["num_hidden_layers"] == 2
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"teacher.onnx", "student.onnx", "teacher.int4-weight.onnx", "student.int4-weight.onnx"}
    for row in rows.values():
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["ttft_ms"] > 0
        assert row["quality"]["perplexity"] > 1 and 0 <= row["quality"]["agreement"] <= 1
    assert rows["student.int4-weight.onnx"]["size_mb"] < rows["student.onnx"]["size_mb"] / 2
    markdown = (run_dir / "report.md").read_text()
    assert "tokens/s" in markdown and "perplexity" in markdown
