"""Issue 29, the gate's semantics case by case (bench/reliability_cases_gate.py), and the pieces in-process: which rows
are compressed variants, which baselines are comparable, failed variants, verified reports, files the gate writes."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys

import pytest

from bench.reliability_cases_gate import CASES
from bench.reliability_inputs import run_case
from compress import compare, gate
from compress.gate import GateUsageError
from tests.test_gate import make_report, row, rows


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case_exit_code_one_message_and_nothing_else_touched(case, inputs, tmp_path):
    problems, _ = run_case(case, tmp_path, inputs)
    assert not problems, problems


# ---------------------------------------------------------------- F4: compressed variants only


@pytest.mark.parametrize(
    ("role", "precision", "runtime", "compressed"),
    [
        ("teacher", "fp32", "torch", False),  # the baseline row
        ("teacher", "fp32", "onnxruntime", False),  # teacher.onnx: the teacher exported, not compressed
        ("teacher", None, "onnxruntime", False),
        ("teacher", "int8-dynamic", "onnxruntime", True),
        ("teacher", "fp16", "onnxruntime", True),
        ("student", "fp32", "onnxruntime", True),  # distilled
        ("student", "int4-weight", "onnxruntime", True),
    ],
)
def test_is_compressed_excludes_the_teacher_at_fp32(role, precision, runtime, compressed):
    assert gate.is_compressed({"role": role, "precision": precision, "runtime": runtime}) is compressed


@pytest.mark.parametrize(
    ("int8_cosine", "int4_cosine", "max_drop", "best"),
    [
        (0.991, 0.977, 0.02, "teacher.int8-dynamic.onnx"),
        (0.991, 0.977, 0.005, None),  # only the teacher's rows are within 0.005: nothing compressed qualifies
        (math.nan, math.nan, 0.5, None),  # NaN never qualifies
        (0.5, 0.5, 0.02, None),
    ],
)
def test_gate_best_is_a_compressed_variant_or_none(tmp_path, int8_cosine, int4_cosine, max_drop, best):
    rep = make_report(tmp_path, rows(int8_cosine=int8_cosine, int4_cosine=int4_cosine))

    result = gate.gate(rep, max_quality_drop=max_drop)

    assert (result["best"] or {}).get("variant") == best
    assert result["passed"] is (best is not None)


def test_gate_fails_without_any_threshold_when_nothing_compressed_qualifies(tmp_path):
    rep = make_report(tmp_path, rows(int8_cosine=0.5, int4_cosine=0.5))

    result = gate.gate(rep)  # no --max-quality-drop, no recipe gate: the report's budget (0.02)

    assert not result["passed"]
    assert [c["gate"] for c in result["checks"] if not c["passed"]] == ["max-quality-drop"]


def test_gate_nan_headline_never_qualifies_whatever_its_drop_says(tmp_path):
    rep = make_report(tmp_path, rows())
    for r in rep["rows"]:
        if r["runtime"] == "onnxruntime":
            r["headline"], r["quality_drop"], r["flags"] = math.nan, 0.0, []

    result = gate.gate(rep, max_quality_drop=0.02)

    assert not result["passed"] and result["best"] is None


# ---------------------------------------------------------------- F6: a baseline that matches


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "text-classification", "headline": "accuracy"}, "a text-classification run, this run is "
                                                                  "sentence-embedding"),
        ({"headline": "top10_agreement"}, "its headline metric is top10_agreement, this run's is cosine"),
        ({"teacher_input": "onnx"}, "was an ONNX model, this run's is a PyTorch model"),
    ],
)
def test_compare_refuses_a_baseline_that_measures_something_else(tmp_path, change, message):
    now = make_report(tmp_path / "now", rows())

    with pytest.raises(GateUsageError, match=message):
        compare.compare(now, {**now, **change}, 0.10)


def test_compare_refuses_agreement_against_accuracy(tmp_path):
    now = {**make_report(tmp_path / "now", rows()), "task": "text-classification", "headline": "accuracy"}

    with pytest.raises(GateUsageError, match="not comparable"):
        compare.compare(now, {**now, "headline": "agreement"}, 0.10)


def test_gate_fails_when_the_baseline_has_no_row_in_common(tmp_path):
    now = make_report(tmp_path / "now", rows())
    other = make_report(tmp_path / "then", [{**r, "seq_len": 256} for r in rows()])

    with pytest.raises(compare.NothingCompared, match="nothing was compared"):
        compare.compare(now, other, 0.10)
    result = gate.gate(now, other, max_quality_drop=0.02)

    assert not result["passed"]
    assert [c["gate"] for c in result["checks"] if not c["passed"]] == ["baseline"]


def test_compare_teacher_rows_alone_in_common_compare_nothing(tmp_path):
    now = make_report(tmp_path / "now", rows()[:1])  # the PyTorch teacher only: the reference, not a deliverable
    with pytest.raises(compare.NothingCompared):
        compare.compare(now, make_report(tmp_path / "then", rows()), 0.10)


# ---------------------------------------------------------------- F7: failed variants


@pytest.mark.parametrize(
    ("status", "base_status", "failed"),
    [
        ("error", "ok", True),
        ("failed", "ok", True),
        ("error", None, True),  # new and broken
        ("skipped", "ok", True),  # measured then, not now
        ("skipped", None, False),
        ("unavailable", "ok", False),  # this machine lacks the provider: nothing said of the model
        ("ok", "ok", False),
    ],
)
def test_compare_counts_a_variant_that_failed_in_this_run(tmp_path, status, base_status, failed):
    broken = row("teacher.int8-dynamic.onnx", 25.1, 0.99, precision="int8-dynamic", source="teacher.onnx",
                 status=status)
    then = [r for r in rows() if r["variant"] != "teacher.int8-dynamic.onnx"]
    if base_status:
        then.append(row("teacher.int8-dynamic.onnx", 25.1, 0.99, precision="int8-dynamic", source="teacher.onnx"))
    now = make_report(tmp_path / "now", [*then[:2], broken, *then[2:4]])
    baseline = make_report(tmp_path / "then", then)

    entry = next(e for e in compare.compare(now, baseline, 0.10) if e["row"]["variant"] == "teacher.int8-dynamic.onnx"
                 and e["row"].get("provider") == "CPUExecutionProvider" and e["verdict"] != "missing in this run")
    result = gate.gate(now, baseline)

    assert entry["failed"] is failed
    assert (not next(c for c in result["checks"] if c["gate"] == "failed-variants")["passed"]) is failed


# ---------------------------------------------------------------- F8: verified reports


def test_load_report_rebuilds_a_run_dir_report_from_its_bench_results(inputs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(inputs.done, run, ignore=shutil.ignore_patterns(".lock"))
    written = json.loads((run / "report.json").read_text())
    edited = {**written, "rows": [{**r, "headline": 0.1} for r in written["rows"]]}
    (run / "report.json").write_text(json.dumps(edited))
    (tmp_path / "alone.json").write_text(json.dumps(edited))

    _, from_run = gate.load_report(run / "report.json")
    _, alone = gate.load_report(tmp_path / "alone.json")

    assert from_run["verified"] is True and alone["verified"] is False
    assert [r["headline"] for r in from_run["rows"]] == [r["headline"] for r in written["rows"]]
    assert {r["headline"] for r in alone["rows"]} == {0.1}


def test_load_report_takes_a_foreign_manifest_for_no_run(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "my web app"}')
    (tmp_path / "report.json").write_text(json.dumps({"rows": []}))

    assert gate.load_report(tmp_path)[1]["verified"] is False


# ---------------------------------------------------------------- F21: the files the gate writes


@pytest.mark.parametrize("option", ["summary", "github_output"])
def test_run_gate_names_the_output_it_could_not_write(tmp_path, option):
    (tmp_path / "report.json").write_text(json.dumps(make_report(tmp_path, rows())))

    with pytest.raises(GateUsageError, match=f"--{option.replace('_', '-')} /dev/full: could not write it "
                                             r"\(the disk is full\)"):
        gate.run_gate(tmp_path / "report.json", **{option: "/dev/full"})


def test_cli_gate_full_disk_names_the_summary_not_the_report(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(make_report(tmp_path, rows())))
    (tmp_path / "summary.md").write_text("x" * 8192)  # at the file size limit: the next write fails (EFBIG)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    proc = subprocess.run([sys.executable, "-m", "compress.cli", "gate", "report.json", "--summary", "summary.md"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, preexec_fn=limit)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--summary summary.md: could not write it (the disk is full)" in proc.stderr
    assert "regenerate" not in proc.stderr
