"""compress gate: the gates on a report built from synthetic bench results, the baseline comparison, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compress import action, compare, gate, report
from compress.gate import GateUsageError


def row(variant, p50, cosine, *, runtime="onnxruntime", precision="fp32", source=None, role="teacher", rounds=None,
        provider="CPUExecutionProvider", status="ok"):
    ok = status == "ok"
    return {
        "variant": variant, "role": role, "precision": precision, "source": source, "runtime": runtime,
        "provider": provider, "provider_used": provider if ok else None, "status": status,
        "reason": None if ok else "not available", "batch_size": 1, "seq_len": 128, "threads": 1,
        "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "rounds_p50": rounds or [p50] * 3}
        if ok else None,
        "throughput": 1000 / p50 if ok else None, "peak_rss_mb": 100.0, "size_mb": 20.0,
        "quality": {"cosine": cosine} if ok else {},
    }


def rows(int8=25.1, int8_rounds=None, int8_cosine=0.991, int4_cosine=0.977):
    return [
        row("teacher", 48.0, 1.0, runtime="torch", provider="cpu"),
        row("teacher.onnx", 40.3, 1.0, source="teacher"),
        row("teacher.int8-dynamic.onnx", int8, int8_cosine, precision="int8-dynamic", source="teacher.onnx",
            rounds=int8_rounds),
        row("teacher.int4-weight.onnx", 41.2, int4_cosine, precision="int4-weight", source="teacher.onnx"),
        row("teacher.onnx", 1.0, None, provider="CUDAExecutionProvider", status="unavailable"),
    ]


def make_report(tmp_path, bench_rows, gates=None) -> dict:
    """A real report.json structure: report.build_report over a synthetic manifest and results.json."""
    folder = tmp_path / "artifacts" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"environment": {}, "settings": {}, "rows": bench_rows}))
    manifest = {"recipe": {"name": "demo", "task": "sentence-embedding", "gates": gates or {}},
                "artifacts": {"bench": {"name": "bench", "path": "artifacts/bench", "format": "bench"}}}
    return report.build_report(tmp_path, manifest)


@pytest.mark.parametrize(
    ("thresholds", "recipe_gates", "passed", "best", "message"),
    [
        ({"max_quality_drop": 0.02}, None, True, "teacher.int8-dynamic.onnx",
         "max-quality-drop: teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1: cosine drop 0.0090 <= 0.02"),
        ({"min_speedup": 1.5}, None, True, "teacher.int8-dynamic.onnx", "1.91x the teacher in PyTorch fp32 >= 1.5x"),
        ({"min_speedup": 1000}, None, False, "teacher.int8-dynamic.onnx",
         "min-speedup: teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1: 1.91x the teacher in PyTorch fp32 < 1000x"),
        ({}, {"min_speedup": 3.0}, False, "teacher.int8-dynamic.onnx", "1.91x the teacher in PyTorch fp32 < 3x"),
        ({"min_speedup": 1.5}, {"min_speedup": 3.0}, True, "teacher.int8-dynamic.onnx", ">= 1.5x"),
    ],
)
def test_gate_checks_quality_and_speedup(tmp_path, thresholds, recipe_gates, passed, best, message):
    rep = make_report(tmp_path, rows(), recipe_gates)

    result = gate.gate(rep, **thresholds)

    assert result["passed"] is passed
    assert result["best"]["variant"] == best
    assert message in "\n".join(c["message"] for c in result["checks"])


def test_gate_fails_when_no_variant_fits_the_quality_budget(tmp_path):
    rep = make_report(tmp_path, rows(int8_cosine=0.95, int4_cosine=0.96))
    rep["rows"] = [r for r in rep["rows"] if r["variant"] != "teacher.onnx" and r["runtime"] != "torch"]

    result = gate.gate(rep, max_quality_drop=0.02, min_speedup=1.0)

    assert not result["passed"] and result["best"] is None
    assert [c["passed"] for c in result["checks"]] == [False, False]
    assert ("no compressed variant keeps its cosine drop within 0.02; the closest is teacher.int4-weight.onnx "
            "onnxruntime/CPU b1/s128/t1 with 0.0400") in result["checks"][0]["message"]


@pytest.mark.parametrize(
    ("now", "now_rounds", "then", "then_rounds", "verdict"),
    [
        (27.9, [27.6, 27.9, 28.3], 25.1, [24.5, 25.1, 26.2], "slower"),  # +11%, rounds apart
        (27.9, [25.0, 27.9, 31.0], 25.1, [24.5, 25.1, 26.2], "same"),  # +11% but within the noise
        (26.0, [25.9, 26.0, 26.1], 25.1, [25.0, 25.1, 25.2], "same"),  # beyond the noise but +4% < 10%
        (20.0, [19.9, 20.0, 20.1], 25.1, [24.5, 25.1, 26.2], "faster"),
        (25.1, None, 25.1, None, "same"),
    ],
)
def test_compare_latency_is_a_regression_only_beyond_threshold_and_noise(tmp_path, now, now_rounds, then,
                                                                         then_rounds, verdict):
    current = make_report(tmp_path / "now", rows(int8=now, int8_rounds=now_rounds))
    baseline = make_report(tmp_path / "then", rows(int8=then, int8_rounds=then_rounds))

    entries = {c["label"]: c for c in compare.compare(current, baseline, 0.10)}

    entry = entries["teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1"]
    assert entry["verdict"] == verdict
    assert entry["delta"] == pytest.approx(now / then - 1)
    assert entries["teacher.onnx onnxruntime/CPU b1/s128/t1"]["verdict"] == "same"
    assert entries["teacher.onnx onnxruntime/CUDA b1/s128/t1"]["verdict"] == "not measured"


def test_gate_latency_regression_names_the_row_and_the_numbers(tmp_path):
    current = make_report(tmp_path / "now", rows(int8=27.9, int8_rounds=[27.6, 27.9, 28.3]))
    baseline = make_report(tmp_path / "then", rows(int8=25.1, int8_rounds=[24.5, 25.1, 26.2]))

    result = gate.gate(current, baseline, max_latency_regression=0.10)

    assert not result["passed"]
    assert result["checks"][-1]["message"] == (
        "max-latency-regression: teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1: p50 27.9 ms vs 25.1 ms "
        "baseline, +11% > 10% (rounds 27.6-28.3 ms vs 24.5-26.2 ms)")
    assert gate.gate(current, baseline, max_latency_regression=0.15)["passed"]


@pytest.mark.parametrize("label, p50", [
    ("teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1", 25.1),
    ("teacher.int8-dynamic.onnx onnxruntime/arm b1/s128/t1", 60.0),
])
def test_compare_matches_arm_and_local_rows_with_their_own_baseline(tmp_path, label, p50):
    arm = {**row("teacher.int8-dynamic.onnx", 60.0, 0.99, precision="int8-dynamic"), "provider_request": "arm"}
    current = make_report(tmp_path / "now", [*rows(), arm])
    baseline = make_report(tmp_path / "then", [*rows(), arm])

    entries = {c["label"]: c for c in compare.compare(current, baseline, 0.10)}

    assert entries[label]["verdict"] == "same" and entries[label]["base"]["p50_ms"] == p50
    assert len(entries) == len(rows()) + 1  # no row is "new" or "missing" for want of its own key


def test_compare_marks_new_and_missing_rows(tmp_path):
    current = make_report(tmp_path / "now", rows()[:3])
    baseline = make_report(tmp_path / "then", [r for i, r in enumerate(rows()) if i != 2])

    verdicts = {c["label"]: c["verdict"] for c in compare.compare(current, baseline, 0.10)}

    assert verdicts["teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1"] == "new"
    assert verdicts["teacher.int4-weight.onnx onnxruntime/CPU b1/s128/t1"] == "missing in this run"


def test_render_markdown_has_gates_decision_table_and_comparison(tmp_path):
    current = make_report(tmp_path / "now", rows(int8=27.9, int8_rounds=[27.6, 27.9, 28.3]))
    baseline = make_report(tmp_path / "then", rows(int8=25.1, int8_rounds=[24.5, 25.1, 26.2]))

    markdown = gate.render_markdown(gate.gate(current, baseline, min_speedup=1.5), current, "old/report.json")

    assert markdown.startswith("## ❌ compress gate FAILED: demo")
    assert "| min-speedup | 1.5x | 1.72x (teacher.int8-dynamic.onnx) | pass |" in markdown
    assert "| max-latency-regression | 10% | +11% (teacher.int8-dynamic.onnx) | **FAIL** |" in markdown
    assert "### Decision table" in markdown and "### Against the baseline (old/report.json)" in markdown
    assert ("| teacher.int8-dynamic.onnx | onnxruntime/CPU | b1/s128/t1 | 27.90 | 25.10 | +11.2% | 6.8% | 0.9910 | "
            "0.9910 | +0.0000 | **slower** |") in markdown


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "cannot read it as JSON"),
        ('{"run": "x"}', "not a compress report.json"),
    ],
)
def test_load_report_usage_errors(tmp_path, content, message):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(GateUsageError, match=message) as caught:
        gate.load_report(path)

    assert caught.value.exit_code == 2


def test_load_report_accepts_a_run_dir_or_an_artifact_folder(tmp_path):
    nested = tmp_path / "artifact" / "runs" / "demo"
    nested.mkdir(parents=True)
    (nested / "report.json").write_text(json.dumps({"rows": []}))

    assert gate.load_report(tmp_path / "artifact")[0] == nested / "report.json"
    assert gate.load_report(nested)[0] == nested / "report.json"


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_gate_rejects_bad_thresholds(tmp_path, value):
    with pytest.raises(GateUsageError, match="expected a number >= 0"):
        gate.gate(make_report(tmp_path, rows()), min_speedup=value)


@pytest.mark.parametrize(
    ("text", "overrides"),
    [
        ("", []),
        ("stages.0.opset=18 data.eval_size=8", ["stages.0.opset=18", "data.eval_size=8"]),
        ('stages.1.schemes="[int8-dynamic, fp16]" name=x', ["stages.1.schemes=[int8-dynamic, fp16]", "name=x"]),
        ("stages.1.schemes=[int8-dynamic, fp16]\n  name=x  \n\n", ["stages.1.schemes=[int8-dynamic, fp16]", "name=x"]),
    ],
)
def test_split_overrides_lines_or_words(text, overrides):
    assert action.split_overrides(text) == overrides


def test_write_github_output_uses_heredoc_for_multiline(tmp_path):
    path = tmp_path / "out"

    gate.write_github_output(path, {"passed": "true", "overrides": "a=1\nb=2"})

    assert path.read_text() == "passed=true\noverrides<<COMPRESS_EOF\na=1\nb=2\nCOMPRESS_EOF\n"


PLAN_RECIPE = """\
version: 1
name: plan-demo
task: sentence-embedding
teacher: {source: model}
data: {source: texts.csv}
stages:
  - kind: export
  - kind: bench
"""


def test_plan_sets_providers_and_keys_the_cache_on_recipe_and_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    (tmp_path / "r.yaml").write_text(PLAN_RECIPE)

    first = action.plan("r.yaml", "stages.0.opset=18", "cpu, cuda")
    same = action.plan("r.yaml", "stages.0.opset=18", "cpu cuda")
    other_set = action.plan("r.yaml", "stages.0.opset=17", "cpu cuda")
    (tmp_path / "model" / "config.json").write_text('{"changed": 1}')
    other_model = action.plan("r.yaml", "stages.0.opset=18", "cpu cuda")

    assert first["overrides"] == ["stages.0.opset=18", "stages.1.providers=[cpu, cuda]"]
    assert first["run-dir"] == "runs/plan-demo" and first["cache-key"].startswith(first["cache-prefix"])
    assert first["cache-key"] == same["cache-key"]
    assert len({first["cache-key"], other_set["cache-key"], other_model["cache-key"]}) == 3


@pytest.mark.parametrize(
    ("args", "rc", "expected"),
    [
        ([], 0, "gate passed; best variant: teacher.int8-dynamic.onnx"),
        (["--min-speedup", "1000"], 1, "FAIL  min-speedup: teacher.int8-dynamic.onnx"),
        (["--baseline", "missing.json"], 2, "baseline missing.json: no such file"),
        (["--min-speedup", "fast"], 2, "Invalid value for '--min-speedup'"),
        (["--max-quality-drop", "-1"], 2, "--max-quality-drop -1.0: expected a number >= 0"),
    ],
)
def test_cli_gate_exit_codes(tmp_path, args, rc, expected):
    rep = make_report(tmp_path, rows(), {"max_quality_drop": 0.02})
    (tmp_path / "report.json").write_text(json.dumps(rep))

    proc = subprocess.run([sys.executable, "-m", "compress.cli", "gate", "report.json", *args,
                           "--github-output", "out.txt", "--summary", "summary.md"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert expected in proc.stdout + proc.stderr
    if rc < 2:
        outputs = (tmp_path / "out.txt").read_text()
        assert f"passed={'true' if rc == 0 else 'false'}\n" in outputs and "report-json=report.json\n" in outputs
        assert "best-variant=teacher.int8-dynamic.onnx\n" in outputs
        assert "### Decision table" in (tmp_path / "summary.md").read_text()
