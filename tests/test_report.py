"""Reports from a synthetic manifest and bench results (the real results.json structure)."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from compress import report


def row(variant, p50, cosine, *, runtime="onnxruntime", precision="fp32", source=None, role="student", size=20.0,
        batch=1, status="ok", provider="CPUExecutionProvider", rounds=None, reason=None):
    ok = status == "ok"
    return {
        "id": f"{variant}|{provider}|b{batch}|s128|t1", "variant": variant, "role": role, "precision": precision,
        "source": source, "runtime": runtime, "provider": provider, "provider_used": provider if ok else None,
        "status": status, "reason": reason, "batch_size": batch, "seq_len": 128, "threads": 1,
        "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "mean": p50, "stdev": 0.1,
                       "rounds_p50": rounds or [p50, p50, p50], "n": 60} if ok else None,
        "throughput": batch * 1000 / p50 if ok else None, "peak_rss_mb": 120.0 if ok else None, "size_mb": size,
        "quality": ({"cosine": cosine, "top10_agreement": 0.9} if cosine is not None else {"cosine": None}) if ok else {},
    }


BASE = [
    row("teacher", 40.0, 1.0, runtime="torch", provider="cpu", role="teacher", size=90.0),
    row("teacher.onnx", 30.0, 1.0, role="teacher", source="teacher", size=90.0),
    row("teacher.int8-dynamic.onnx", 20.0, 0.99, precision="int8-dynamic", source="teacher.onnx", role="teacher",
        size=22.0),
    row("teacher.int4-weight.onnx", 35.0, 0.98, precision="int4-weight", source="teacher.onnx", role="teacher",
        size=60.0),
    row("student.onnx", 10.0, 0.90, source="student", size=60.0),
    row("teacher.onnx", None, None, provider="CUDAExecutionProvider", status="unavailable",
        reason="CUDAExecutionProvider is not in onnxruntime's available providers"),
    row("teacher", 300.0, 1.0, runtime="torch", provider="cpu", role="teacher", size=90.0, batch=32),
    row("student.onnx", 50.0, 0.90, source="student", size=60.0, batch=32),
]


def make_run(tmp_path, rows, gates=None, stages=None):
    folder = tmp_path / "artifacts" / "bench"
    folder.mkdir(parents=True)
    results = {"environment": {"cpu": {"model": "AMD EPYC", "arch": "x86_64", "cores": 2, "flags": {"avx2": True}},
                               "os": "Linux", "python": "3.11", "versions": {"onnxruntime": "1.32.0"}},
               "settings": {"rounds": 3, "warmup": 5, "min_iterations": 20, "min_seconds": 1.0, "eval_size": 500},
               "rows": rows}
    (folder / "results.json").write_text(json.dumps(results))
    return {"recipe": {"name": "demo", "task": "sentence-embedding", "gates": gates or {}},
            "stages": stages or {"bench": {"kind": "bench", "status": "done", "seconds": 100.0, "metrics": {}}},
            "artifacts": {"bench": {"name": "bench", "path": "artifacts/bench", "format": "bench", "sha256": "x",
                                    "metadata": {}}}}


def find(report_, variant, batch=1, provider=None):
    return next(r for r in report_["rows"] if r["variant"] == variant and r["batch_size"] == batch
                and (provider is None or r["provider"] == provider))


def test_write_reports_writes_json_and_markdown(tmp_path):
    manifest = make_run(tmp_path, BASE)

    result = report.write_reports(tmp_path, manifest)

    assert json.loads((tmp_path / "report.json").read_text()) == result
    markdown = (tmp_path / "report.md").read_text()
    assert "**Recommendation.** Use teacher.int8-dynamic.onnx" in markdown
    assert markdown.count("\n| ") == 1 + len(BASE)  # header + one line per row
    assert "AMD EPYC" in markdown and "Gates:** none set" in markdown


def test_report_rows_sorted_by_p50_within_each_setting(tmp_path):
    result = report.build_report(tmp_path, make_run(tmp_path, BASE))

    order = [(r["setting"], r["variant"], r["status"]) for r in result["rows"]]

    assert order == [
        ("b1/s128/t1", "student.onnx", "ok"), ("b1/s128/t1", "teacher.int8-dynamic.onnx", "ok"),
        ("b1/s128/t1", "teacher.onnx", "ok"), ("b1/s128/t1", "teacher.int4-weight.onnx", "ok"),
        ("b1/s128/t1", "teacher", "ok"), ("b1/s128/t1", "teacher.onnx", "unavailable"),
        ("b32/s128/t1", "student.onnx", "ok"), ("b32/s128/t1", "teacher", "ok"),
    ]


def test_report_speedup_size_and_drop_against_torch_teacher_at_same_setting(tmp_path):
    result = report.build_report(tmp_path, make_run(tmp_path, BASE))

    small, large = find(result, "student.onnx"), find(result, "student.onnx", batch=32)

    assert small["speedup"] == pytest.approx(4.0) and large["speedup"] == pytest.approx(6.0)
    assert small["size_ratio"] == pytest.approx(60 / 90)
    assert small["quality_drop"] == pytest.approx(0.10) and small["headline"] == pytest.approx(0.90)
    assert find(result, "teacher")["is_baseline"] and find(result, "teacher")["speedup"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("variant", "provider", "expected", "absent"),
    [
        ("teacher.int4-weight.onnx", "CPUExecutionProvider", "slower than its fp32 source (teacher.onnx", None),
        ("teacher.int8-dynamic.onnx", "CPUExecutionProvider", None, "slower than"),
        ("teacher.onnx", "CUDAExecutionProvider", "unavailable: CUDAExecutionProvider is not in", None),
        ("student.onnx", "CPUExecutionProvider", "quality drop over 0.02", None),
        ("teacher", "cpu", "baseline", "quality drop"),
    ],
)
def test_report_flags(tmp_path, variant, provider, expected, absent):
    result = report.build_report(tmp_path, make_run(tmp_path, BASE))

    flags = "; ".join(find(result, variant, provider=provider)["flags"])

    if expected:
        assert expected in flags
    if absent:
        assert absent not in flags


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (row("nan.onnx", 5.0, math.nan, source="student"), "NaN"),
        (row("nan2.onnx", 5.0, None, source="student"), "NaN"),
        (row("jumpy.onnx", 5.0, 0.999, source="student", rounds=[4.0, 5.0, 7.0]), "noisy: rounds differ by 60%"),
    ],
)
def test_report_flags_nan_and_noise(tmp_path, extra, flag):
    rows = [*BASE, extra]
    rows[-1] = {**extra, "quality": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                     for k, v in extra["quality"].items()}}
    result = report.build_report(tmp_path, make_run(tmp_path, rows))

    assert flag in "; ".join(find(result, extra["variant"])["flags"])
    assert result["recommendation"]["variant"] != "nan.onnx"


@pytest.mark.parametrize(
    ("gates", "recommended", "passed"),
    [
        ({}, "teacher.int8-dynamic.onnx", True),
        ({"max_quality_drop": 0.2}, "student.onnx", True),
        ({"max_quality_drop": 0.2, "min_speedup": 5.0}, "student.onnx", False),
        ({"max_quality_drop": 0.0}, "teacher.onnx", True),  # fp32 ONNX beats torch at no cost
        ({"min_speedup": 1.5}, "teacher.int8-dynamic.onnx", True),
    ],
)
def test_report_recommends_fastest_within_quality_budget(tmp_path, gates, recommended, passed):
    result = report.build_report(tmp_path, make_run(tmp_path, BASE, gates=gates))

    assert result["recommendation"]["variant"] == recommended
    assert result["recommendation_text"].startswith(f"Use {recommended} on ")
    assert result["gates"]["passed"] is passed
    assert [c["gate"] for c in result["gates"]["checks"]] == [g for g in ("max_quality_drop", "min_speedup") if g in gates]


def test_report_says_nothing_qualifies_and_fails_gates(tmp_path):
    rows = [row("teacher", 40.0, 1.0, runtime="torch", provider="cpu", role="teacher", size=90.0),
            row("student.onnx", 10.0, 0.90), row("student.int8-dynamic.onnx", 6.0, 0.85, precision="int8-dynamic",
                                                  source="student.onnx")]
    rows[0]["quality"] = {}  # no reference quality: the teacher cannot qualify either
    result = report.build_report(tmp_path, make_run(tmp_path, rows, gates={"max_quality_drop": 0.05, "min_speedup": 2}))

    assert result["recommendation"] is None
    assert result["recommendation_text"].startswith("Nothing qualifies")
    assert result["gates"]["passed"] is False
    assert all(c["detail"] == "nothing qualifies" and not c["passed"] for c in result["gates"]["checks"])


def test_report_distillation_section_when_metrics_present(tmp_path):
    stages = {"distill": {"kind": "distill", "status": "done", "seconds": 300.0,
                          "metrics": {"teacher_params": 22_700_000, "student_params": 11_350_000,
                                      "quality_before": {"cosine": 0.60}, "quality_after": 0.87}}}
    manifest = make_run(tmp_path, BASE, stages=stages)

    result = report.write_reports(tmp_path, manifest)

    dist = result["distillation"]
    assert dist["params_ratio"] == pytest.approx(0.5) and dist["gain"] == pytest.approx(0.27)
    assert "## Distillation" in (tmp_path / "report.md").read_text()


def test_decision_table_renders_every_row(tmp_path):
    result = report.build_report(tmp_path, make_run(tmp_path, BASE))
    console = Console(record=True, width=250)

    console.print(report.decision_table(result))

    text = console.export_text()
    assert "cosine" in text and "onnxruntime/CPU" in text and "torch/cpu" in text
    assert text.count("student.onnx") == 2 and "unavailable" in text and "Use teacher.int8-dynamic.onnx" in text


def make_selected(tmp_path, select, rows=None, targets=None):
    manifest = make_run(tmp_path, rows or BASE)
    manifest["recipe"].update(select=select, targets=targets or {})
    return report.build_report(tmp_path, manifest)


@pytest.mark.parametrize(
    "select, recommended, batch",
    [
        ({}, "teacher.int8-dynamic.onnx", 1),
        ({"max_quality_drop": 0.2}, "student.onnx", 1),
        ({"max_quality_drop": 0.2, "objective": "size"}, "teacher.int8-dynamic.onnx", 1),
        ({"max_quality_drop": 0.2, "max_size_mb": 50}, "teacher.int8-dynamic.onnx", 1),
        ({"max_quality_drop": 0.2, "setting": "b32/s128/t1"}, "student.onnx", 32),
        ({"max_quality_drop": 0.2, "provider": "cpu"}, "student.onnx", 1),
        ({"max_quality_drop": 0.2, "provider": "CUDAExecutionProvider"}, None, 1),  # it did not run
    ],
)
def test_report_select_constraints_and_objective(tmp_path, select, recommended, batch):
    result = make_selected(tmp_path, select)

    best = result["recommendation"]
    assert (best and (best["variant"], best["batch_size"])) == ((recommended, batch) if recommended else None)
    if recommended:
        assert result["recommendation_text"].startswith(f"Use {recommended} on ")
        assert f"lowest {select.get('objective', 'p50')} of " in result["recommendation_text"]
    else:
        assert result["recommendation_text"].startswith("Nothing qualifies")


def test_report_select_names_why_rows_were_excluded(tmp_path):
    result = make_selected(tmp_path, {"max_quality_drop": 0.05, "max_size_mb": 21})

    assert result["recommendation"] is None
    text = result["recommendation_text"]
    assert "quality drop over 0.05" in text and "larger than 21" in text and "The closest is" in text


def test_report_select_tie_goes_to_better_quality_and_says_so(tmp_path):
    rows = BASE[:1] + [row("a.onnx", 10.0, 0.95, size=30.0), row("b.onnx", 10.2, 0.97, size=40.0),
                       row("c.onnx", 12.0, 0.99, size=10.0)]
    result = make_selected(tmp_path, {"max_quality_drop": 0.1}, rows)

    assert result["recommendation"]["variant"] == "b.onnx"  # within 3% of a.onnx, and better
    assert "Tie within 3% on p50 with a.onnx" in result["recommendation_text"]


def test_report_cost_per_million_and_saving_vs_teacher(tmp_path):
    result = make_selected(tmp_path, {"max_quality_drop": 0.2}, targets={"local": {"price_per_hour": 1.0}})

    teacher, student = find(result, "teacher"), find(result, "student.onnx")
    assert teacher["cost_per_million"] == pytest.approx(40.0 / 1000 / 3600 * 1e6)  # 40 ms a text at $1/h
    assert student["cost_per_million"] == pytest.approx(10.0 / 1000 / 3600 * 1e6)
    assert student["cost_saving"] == pytest.approx(0.75) and teacher["cost_saving"] == pytest.approx(0.0)
    assert find(result, "student.onnx", batch=32)["cost_per_million"] == pytest.approx(50.0 / 32 / 3600 * 1000)
    assert "per million inferences, 75% less than the teacher" in result["recommendation_text"]
    assert make_selected(tmp_path / "free", {})["rows"][0]["cost_per_million"] is None  # no price, no cost


def test_report_select_cost_objective_needs_a_price(tmp_path):
    result = make_selected(tmp_path, {"objective": "cost"})

    assert result["recommendation"] is None and "no cost" in result["recommendation_text"]


def test_report_emulated_rows_get_no_speedup_and_are_never_recommended(tmp_path):
    emulated = [dict(row("student.onnx", 1.0, 0.99, source="student"), target="qemu-arm64", emulated=True,
                     id="student.onnx|CPUExecutionProvider|b1|s128|t1|@qemu-arm64"),
                dict(row("teacher.onnx", 2.0, 1.0, role="teacher", source="teacher"), target="qemu-arm64",
                     emulated=True)]
    manifest = make_run(tmp_path, BASE + emulated)
    manifest["recipe"]["select"] = {"max_quality_drop": 0.2}

    result = report.build_report(tmp_path, manifest)

    arm = next(r for r in result["rows"] if r["setting"] == "b1/s128/t1@qemu-arm64" and r["variant"] == "student.onnx")
    assert arm["speedup"] is None and arm["flags"][0].startswith("emulated")
    assert arm["quality_drop"] == pytest.approx(0.01)  # correctness is still measured against the teacher
    assert result["recommendation"]["variant"] == "student.onnx" and result["recommendation"]["target"] == "local"


def test_report_unavailable_row_names_the_provider_as_written(tmp_path):
    missing = dict(row("student.onnx", None, None, provider="CUDAExecutionProvider", status="unavailable",
                       reason="onnxruntime-gpu not installed"), provider_request="cuda")

    result = report.build_report(tmp_path, make_run(tmp_path, BASE[:2] + [missing]))

    assert find(result, "student.onnx")["flags"] == ["cuda: unavailable (onnxruntime-gpu not installed)"]


def test_report_session_settings_are_separate_rows_and_targets_are_listed(tmp_path):
    basic = dict(row("student.onnx", 12.0, 0.90, source="student"), graph_optimization="basic")
    manifest = make_run(tmp_path, BASE + [basic])
    results = tmp_path / "artifacts" / "bench" / "results.json"
    doc = json.loads(results.read_text())
    doc["targets"] = {"pi5": {"machine": "aarch64", "cpu_model": "Cortex-A76", "cores": 4, "emulated": False,
                              "cpu_flags": {"asimddp": True}, "onnxruntime": "1.32.0"}}
    results.write_text(json.dumps(doc))

    result = report.write_reports(tmp_path, manifest)

    assert {r["setting"] for r in result["rows"] if r["variant"] == "student.onnx"} >= {"b1/s128/t1",
                                                                                      "b1/s128/t1/opt-basic"}
    assert "target pi5: Cortex-A76 (aarch64, 4 cores" in (tmp_path / "report.md").read_text()


def test_report_notes_gpu_rows_whose_compute_ran_on_the_cpu(tmp_path):
    split = row("student.int8-dynamic.onnx", 8.2, 0.95, precision="int8-dynamic", provider="CUDAExecutionProvider")
    split["placement"] = {"nodes": {"CUDAExecutionProvider": 340, "CPUExecutionProvider": 62},
                          "cpu_ops": {"MatMulInteger": 36, "DynamicQuantizeLinear": 24}}
    whole = row("student.fp16.onnx", 0.4, 0.95, precision="fp16", provider="CUDAExecutionProvider")
    whole["placement"] = {"nodes": {"CUDAExecutionProvider": 300, "CPUExecutionProvider": 3}, "cpu_ops": {}}

    report.write_reports(tmp_path, make_run(tmp_path, [*BASE, split, whole]))

    notes = [line for line in (tmp_path / "report.md").read_text().splitlines() if "ran on the CPU" in line]
    assert notes == ["- student.int8-dynamic.onnx on CUDA (b1/s128/t1): 62 of 402 nodes ran on the CPU "
                     "(MatMulInteger x36, DynamicQuantizeLinear x24); its time includes them and the copies to and "
                     "from the device"]


def _quantized(precision, size_mb, runtimes=None, size_note=None, options=None):
    meta = {"source": "student.onnx", "precision": precision, "size_bytes": int(size_mb * 1e6),
            "scheme_options": {**({"size_note": size_note} if size_note else {}), **(options or {})}}
    return {"name": f"student.{precision}.onnx", "path": f"artifacts/student.{precision}.onnx", "format": "onnx",
            "sha256": "x", "metadata": {**meta, **({"runtimes": runtimes} if runtimes is not None else {})}}


ORT_ONLY = {"standard_onnx": False, "onnxruntime_only": ["com.microsoft.QAttention"], "note": "onnxruntime only"}
STANDARD = {"standard_onnx": True, "onnxruntime_only": [], "note": "standard ONNX operators only"}
OPENVINO = {"standard_onnx": False, "onnxruntime_only": [], "note": "onnxruntime and OpenVINO"}


@pytest.mark.parametrize("artifacts, present, absent", [
    ([_quantized("int8-dynamic", 15, ORT_ONLY), _quantized("int8-portable", 15, STANDARD)],
     ["- onnxruntime only: student.int8-dynamic.onnx (com.microsoft.QAttention)",
      "- any ONNX runtime (standard operators): student.int8-portable.onnx"], ["larger than int8-dynamic"]),
    ([_quantized("int8-dynamic", 15, ORT_ONLY), _quantized("int8-static", 21, STANDARD, "GELU inputs in float"),
      _quantized("int4-weight", 11, OPENVINO)],
     ["- onnxruntime and OpenVINO: student.int4-weight.onnx",
      "- student.int8-static.onnx is larger than int8-dynamic (21.0 vs 15.0 MB): GELU inputs in float"],
     ["int4-weight.onnx is larger"]),
    ([_quantized("int8-dynamic", 15)], [], ["## Where the variants run"]),  # an older manifest: no facts, no section
    ([_quantized("int8-dynamic", 15, STANDARD, options={"form": "matmul-integer", "form_why": "x86 with VNNI"})],
     ["- student.int8-dynamic.onnx is in the matmul-integer int8 form: x86 with VNNI"], ["fused int8 form"]),
], ids=["onnxruntime-only", "larger-says-why", "no-facts", "int8-form"])
def test_report_says_where_variants_run(tmp_path, artifacts, present, absent):
    manifest = make_run(tmp_path, BASE)
    manifest["artifacts"].update({a["name"]: a for a in artifacts})

    result = report.write_reports(tmp_path, manifest)

    markdown = (tmp_path / "report.md").read_text()
    assert all(line in markdown for line in present) and not any(text in markdown for text in absent)
    assert set(result["runtimes"]) == {a["name"] for a in artifacts if "runtimes" in a["metadata"]}


@pytest.mark.parametrize("ci, expected", [
    ({"top10_agreement": [0.85, 0.95]}, "top10_agreement 0.900 [0.850, 0.950]"),  # per-item scores gave one
    ({}, "top10_agreement 0.900"),  # none measured: the figure alone, no made-up interval
])
def test_table_cells_other_quality_shows_its_interval(tmp_path, ci, expected):
    result = report.write_reports(tmp_path, make_run(tmp_path, BASE))
    row_ = {**find(result, "student.onnx"), "quality_ci": ci}

    cell = report.table_cells(row_, result["headline"])[report.COLUMNS.index("other quality")]

    assert cell == expected
