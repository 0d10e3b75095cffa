"""Issue 29, the gate's semantics: what `compress gate` and `compress compare` may pass. Each case prepares reports
as a user or a CI job would leave them (the finished tiny run, copied or edited), names the command, and what must
come of it (bench/reliability_inputs.py runs them; tests/test_trust_gate.py, case by case)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from bench.reliability_cases import _done_copy
from bench.reliability_inputs import Case, Inputs

# ---------------------------------------------------------------- preparing the cases


def _report(inputs: Inputs) -> dict:
    return json.loads((inputs.done / "report.json").read_text())


def _alone(work: Path, report: dict, name: str = "report.json") -> Path:
    """A report.json on its own (a downloaded CI artifact): not beside its run's manifest, so taken as written."""
    path = work / name
    path.write_text(json.dumps(report))
    return path


def _onnx_rows(report: dict, **values) -> dict:
    """Every ONNX row's headline quality and drop set (the issue's edit: cosine 0.5 or NaN on every ONNX row)."""
    for row in report["rows"]:
        if row.get("runtime") == "onnxruntime" and row.get("status") == "ok":
            row.update(values)
    return report


def _teacher_only(report: dict) -> dict:
    return {**report, "rows": [r for r in report["rows"] if "." not in r["variant"] or r["variant"] == "teacher.onnx"]}


def _int8(report: dict, **values) -> dict:
    row = next(r for r in report["rows"] if "int8" in r["variant"])
    row.update(values)
    return report


def _all_rows(report: dict, edit: Callable[[dict], None]) -> dict:
    for row in report["rows"]:
        edit(row)
    return report


def _other_setting(row: dict) -> None:
    row["setting"] = row["setting"].replace("/s16/", "/s999/")
    row["seq_len"] = 999


def _pair(work: Path, inputs: Inputs, baseline: dict, now: dict | None = None) -> tuple[Path, Path]:
    """(baseline, new) report files on their own."""
    now = now if now is not None else _report(inputs)
    return _alone(work, baseline, "baseline.json"), _alone(work, now, "new.json")


def _classification(report: dict, headline: str) -> dict:
    for row in report["rows"]:
        row["quality"] = {headline: row.get("headline")}
    return {**report, "task": "text-classification", "headline": headline}


def _gate_pair(work: Path, inputs: Inputs, baseline: dict, now: dict | None = None) -> list[str]:
    old, new = _pair(work, inputs, baseline, now)
    return ["gate", str(new), "--baseline", str(old)]


def _compare_pair(work: Path, inputs: Inputs, baseline: dict, now: dict | None = None) -> list[str]:
    return ["compare", *map(str, _pair(work, inputs, baseline, now))]


def _edited_report_in_run(work: Path, inputs: Inputs) -> list[str]:
    """The issue's F8: report.json in its run directory edited, every ONNX row 10,000 times faster."""
    run = _done_copy(work, inputs)
    report = json.loads((run / "report.json").read_text())
    for row in report["rows"]:
        if row.get("runtime") == "onnxruntime" and row.get("status") == "ok":
            row["p50_ms"] /= 10_000
            row["speedup"] *= 10_000
    (run / "report.json").write_text(json.dumps(report))
    return ["gate", str(run), "--min-speedup", "1000"]


def _edited_results_in_run(work: Path, inputs: Inputs) -> list[str]:
    run = _done_copy(work, inputs)
    results = run / "artifacts" / "bench" / "results.json"
    data = json.loads(results.read_text())
    for row in data["rows"]:
        if isinstance(row.get("latency_ms"), dict):
            row["latency_ms"]["p50"] /= 100
    results.write_text(json.dumps(data))
    return ["gate", str(run / "report.json")]


CASES: list[Case] = [
    # --- F4: the gate passes compressed variants only
    Case("gate_teacher_is_not_a_variant", "`compress gate RUN --max-quality-drop 0`: the teacher's own rows (PyTorch "
         "and its fp32 ONNX export) are the reference, never the best variant",
         lambda w, i: ["gate", str(_done_copy(w, i)), "--max-quality-drop", "0"], 1,
         "max-quality-drop: no compressed variant keeps its cosine drop within 0"),
    Case("gate_onnx_rows_at_half", "`compress gate` of a report whose every ONNX row has cosine 0.5",
         lambda w, i: ["gate", str(_alone(w, _onnx_rows(_report(i), headline=0.5, quality_drop=0.5)))], 1,
         "no compressed variant keeps its cosine drop within 0.02"),
    Case("gate_onnx_rows_nan", "`compress gate` of a report whose every ONNX row has cosine NaN (drop 0.0)",
         lambda w, i: ["gate", str(_alone(w, _onnx_rows(_report(i), headline=math.nan, quality_drop=0.0)))], 1,
         "no compressed variant keeps its cosine drop within 0.02"),
    Case("gate_no_compressed_variant", "`compress gate` of a report with the teacher's rows only (export, no quantize)",
         lambda w, i: ["gate", str(_alone(w, _teacher_only(_report(i))))], 1, "the report has no compressed variant"),
    # --- F6: a baseline that does not match is refused, nothing compared is a failure
    Case("gate_baseline_other_setting", "`compress gate --baseline` whose rows are all at another setting (s999)",
         lambda w, i: _gate_pair(w, i, _all_rows(_report(i), _other_setting)), 1, "nothing was compared"),
    Case("compare_other_setting", "`compress compare` of runs with no row at the same setting",
         lambda w, i: _compare_pair(w, i, _all_rows(_report(i), _other_setting)), 1, "nothing was compared"),
    Case("gate_baseline_other_task", "`compress gate --baseline` of a text-classification run (accuracy) against a "
         "sentence-embedding run", lambda w, i: _gate_pair(w, i, _classification(_report(i), "accuracy")), 2,
         "baseline: a text-classification run, this run is sentence-embedding"),
    Case("compare_other_headline", "`compress compare` of a run whose headline metric is another (same task)",
         lambda w, i: _compare_pair(w, i, {**_report(i), "headline": "top10_agreement"}), 2,
         "its headline metric is top10_agreement, this run's is cosine"),
    Case("gate_baseline_agreement_vs_accuracy", "`compress gate --baseline`: agreement with the teacher in the "
         "baseline, accuracy on labels now", lambda w, i: _gate_pair(w, i, _classification(_report(i), "agreement"),
                                                                      _classification(_report(i), "accuracy")), 2,
         "not comparable"),
    # --- F7: a variant that failed in the new run is a regression
    Case("gate_failed_variant", "`compress gate --baseline`: the int8 variant failed in the new run (status: error)",
         lambda w, i: _gate_pair(w, i, _report(i), _int8(_report(i), status="error", reason="exit 1: boom",
                                                          p50_ms=None, headline=None, quality_drop=None)), 1,
         "failed-variants: teacher.int8-dynamic.onnx"),
    Case("compare_failed_variant", "`compress compare`: the int8 variant has `status: failed` in the new run",
         lambda w, i: _compare_pair(w, i, _report(i), _int8(_report(i), status="failed", p50_ms=None,
                                                            headline=None, quality_drop=None)), 1,
         "variants that failed in this run: teacher.int8-dynamic.onnx", messages=0),
    # --- F8: a run directory is judged by its hash-checked bench results
    Case("gate_edited_report_in_run", "`compress gate RUN --min-speedup 1000` of a run whose report.json was edited "
         "(p50 / 10,000)", _edited_report_in_run, 1, "the teacher in PyTorch fp32 < 1000x"),
    Case("gate_edited_results_in_run", "`compress gate RUN/report.json` of a run whose bench results.json was edited",
         _edited_results_in_run, 2, "changed since the run wrote it"),
    Case("gate_report_alone_unverified", "`compress gate REPORT` of a report.json away from its run directory",
         lambda w, i: ["gate", str(_alone(w, _report(i)))], 0, "unverified"),
]

# Found by issue 29 (an independent probe of the landed code), fixed, and listed in docs/reliability.md.
FIXED = [
    "`compress gate RUN --max-quality-drop 0` passed with \"best variant: teacher\": the teacher's own rows (PyTorch, "
    "and its fp32 ONNX export) qualified as the best compressed variant, so the quality gate could not fail, not "
    "even with every ONNX row at cosine 0.5 or NaN; the gate judges compressed variants only (distilled or "
    "quantized), NaN never qualifies, and a run where none qualifies fails",
    "`compress gate --baseline` and `compress compare` passed a baseline with no row at the same setting (\"0 "
    "compared\", exit 0) and compared another task, another headline metric, agreement against accuracy: nothing "
    "compared is a failure (exit 1), a baseline measuring something else is refused with one sentence (exit 2)",
    "a variant that failed in the new run (status error or failed; skipped where the baseline measured it) passed "
    "gate and compare: it is a regression (`failed-variants`)",
    "`compress gate RUN_DIR` judged an edited report.json (p50 / 10,000 passed --min-speedup 1000): in its run "
    "directory a report is rebuilt from the bench results checked against manifest.json, as `compress report` "
    "does; a report.json alone is judged as written and the gate says it is unverified",
    "a full disk while writing `gate --summary`, `--comment` or `--github-output` was blamed on the report "
    "(\"regenerate it with compress report\"): the message names the file that could not be written",
]
