"""Sweeps: a recipe matrix expands into named variants that share the stages they have in common."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from compress import report as reports
from compress import runner, sweep
from compress.errors import CompressError, RecipeError
from compress.recipe import expand_matrix, parse_recipe
from compress.report import sweep as sweep_report

BASE = """\
version: 1
name: tiny
task: sentence-embedding
teacher: {{source: {model}}}
data: {{source: {data}, eval_size: 20}}
stages:
  - kind: export
    parity_texts: 4
  - kind: quantize
    name: q1
    models: [teacher.onnx]
  - kind: quantize
    name: q2
    models: [teacher.onnx]
{matrix}"""


@pytest.mark.parametrize("matrix, names", [
    ("matrix: {stages.1.schemes: [[int8-dynamic], [fp16]]}", ["schemes-int8-dynamic", "schemes-fp16"]),
    ("matrix: {stages.1.schemes: [[int8-dynamic], [fp16]], stages.0.opset: [17, 18]}",
     ["schemes-int8-dynamic_opset-17", "schemes-int8-dynamic_opset-18", "schemes-fp16_opset-17",
      "schemes-fp16_opset-18"]),
    ("matrix: {stages.0.opset: [17, '17']}", ["v01-opset-17", "v02-opset-17"]),  # alike names: numbered
])
def test_recipe_matrix_expands_into_named_variants(matrix, names):
    recipe = parse_recipe(BASE.format(model="m", data="d.csv", matrix=matrix))

    variants = expand_matrix(recipe)

    assert [name for name, _, _ in variants] == names
    for name, values, variant in variants:
        assert variant.matrix is None and variant.name == f"tiny.{name}"
        # unset schemes: the stage picks (int8-dynamic; int8-static for a model dominated by convolutions)
        assert variant.stages[1].schemes == values.get("stages.1.schemes")


@pytest.mark.parametrize("matrix, message", [
    ("matrix: {stages.1.schemes: [[int8-dynamic], [int3]]}", "matrix variant schemes-int3: .*'int3' is not one of"),
    ("matrix: {stages.9.schemes: [[fp16]]}", "not an index"),
    ("matrix: {stages.1.schemes: []}", "at least 1 item"),
    ("matrix: {'stages..x': [1]}", "not a recipe path"),
])
def test_recipe_matrix_rejects_bad_variants(matrix, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(BASE.format(model="m", data="d.csv", matrix=matrix))


def test_runner_refuses_a_matrix_recipe_which_only_the_sweep_runs(tmp_path):
    recipe = parse_recipe(BASE.format(model=tmp_path, data=tmp_path / "t.txt",
                                      matrix="matrix: {stages.1.schemes: [[int8-dynamic], [fp16]]}"))

    with pytest.raises(CompressError, match="it is a sweep"):
        runner.run(recipe, tmp_path / "run", console=Console(stderr=True, quiet=True))
    assert not (tmp_path / "run").exists()


def test_sweep_computes_shared_stages_once_and_caches_reruns(tmp_path, tiny_bert, tiny_texts):
    matrix = ("matrix:\n  stages.1.schemes: [[int8-dynamic], [fp16], [int4-weight]]\n"
              "  stages.2.schemes: [[int8-dynamic], [fp16]]\n")
    recipe = parse_recipe(BASE.format(model=tiny_bert, data=tiny_texts, matrix=matrix))

    first = sweep.run_any(recipe, tmp_path / "sweep", console=Console(stderr=True, quiet=True))
    again = sweep.run_any(recipe, tmp_path / "sweep", console=Console(stderr=True, quiet=True))

    variants = first["sweep"]["variants"]
    assert len(variants) == 6
    how = {stage: [v["stages"][stage]["cache"] for v in variants] for stage in ("export", "q1", "q2")}
    assert how["export"] == ["computed"] + ["shared"] * 5  # one export for six variants
    assert how["q1"].count("computed") == 3 and how["q1"].count("shared") == 3
    assert how["q2"] == ["computed"] * 6  # its inputs (q1's outputs) differ between variants
    assert first["sweep"]["cache"] == {"computed": 1 + 3 + 6, "shared": 5 + 3, "hit": 0}
    assert set(again["sweep"]["cache"]) >= {"computed"} and again["sweep"]["cache"]["computed"] == 0
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    assert manifest["sweep"]["cache"] == again["sweep"]["cache"]
    second = json.loads((tmp_path / "sweep" / "variants" / variants[1]["name"] / "manifest.json").read_text())
    assert second["stages"]["export"]["from"] == variants[0]["name"]


def _row(variant, p50, drop, setting="b1/s128/t1"):
    return {"variant": variant, "status": "ok", "runtime": "onnxruntime", "provider": "CPUExecutionProvider",
            "setting": setting, "p50_ms": p50, "quality_drop": drop, "headline": 1 - drop, "flags": [],
            "artifact_sha256": variant, "speedup": 2.0, "size_mb": 1.0, "precision": "int8-dynamic"}


def test_sweep_report_ranks_rows_of_every_variant(tmp_path):
    manifest = {"recipe": {"name": "s", "task": "sentence-embedding", "select": {"objective": "p50"}},
                "sweep": {"matrix": {"stages.3.threads": [[1], [2]]}, "cache": {},
                          "variants": [{"name": "threads-1", "values": {}, "stages": {}},
                                       {"name": "threads-2", "values": {}, "stages": {}}]}}
    per_variant = {
        "threads-1": {"max_quality_drop": 0.02, "rows": [_row("a", 5.0, 0.001), _row("shared", 3.0, 0.0),
                                                         _row("lossy", 1.0, 0.2)]},
        "threads-2": {"max_quality_drop": 0.02, "rows": [_row("a", 4.0, 0.001, "b1/s128/t2"),
                                                         _row("shared", 3.0, 0.0)]},
    }

    result = sweep_report.build_report(manifest, per_variant)

    ranked = [(r["variant"], r["rank"]) for r in result["rows"]]
    assert ranked == [("threads-1/shared", 1), ("threads-2/a", 2), ("threads-1/a", 3), ("threads-1/lossy", None)]
    assert result["rows"][0]["also_in"] == ["threads-2"]  # one model measured the same way: listed once
    assert result["recommendation"]["variant"] == "threads-1/shared"
    assert "| 1 | threads-1/shared |" in sweep_report.render_markdown(result)


@pytest.mark.parametrize("select, ranked", [
    ({}, ["pi", "local"]),
    ({"target": "local"}, ["local"]),
    ({"target": "pi"}, ["pi"]),
    ({"provider": "cuda"}, []),
    ({"max_size_mb": 0.5}, []),
])
def test_sweep_rank_uses_the_reports_eligibility_rule(select, ranked):
    rows = [{**_row("local", 5.0, 0.001), "target": "local"},
            {**_row("pi", 3.0, 0.001, "b1/s128/t1@pi"), "target": "pi"}]

    result = sweep_report.rank(rows, select, 0.02)

    assert [r["variant"] for r in result if r["rank"] is not None] == ranked
    assert all(reports.qualifies(r, select, 0.02) == (r["variant"] in ranked) for r in rows)


@pytest.mark.slow
def test_sweep_with_bench_ranks_every_variant_in_one_report(tmp_path, tiny_bert, tiny_texts):
    recipe_text = BASE.replace("  - kind: quantize\n    name: q2\n    models: [teacher.onnx]\n", (
        "  - kind: bench\n    seq_lens: [16]\n    warmup: 0\n    min_iterations: 3\n    min_seconds: 0.0\n"
        "    rounds: 1\n    eval_size: 8\n"))
    matrix = "matrix:\n  stages.1.schemes: [[int8-dynamic], [fp16], [int4-weight]]\n  stages.2.threads: [[1], [2]]\n"
    recipe = parse_recipe(recipe_text.format(model=tiny_bert, data=tiny_texts, matrix=matrix))

    result = sweep.run_any(recipe, tmp_path / "sweep", console=Console(stderr=True, quiet=True))
    report = reports.write_reports(tmp_path / "sweep", result)  # as `compress run` does after the stages

    variants = [v["name"] for v in result["sweep"]["variants"]]
    assert len(variants) == 6 and result["sweep"]["cache"]["shared"] == 5 + 3  # export once, each scheme once
    ranked = [r for r in report["rows"] if r.get("rank")]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    named = {r["variant"].split("/")[0] for r in report["rows"]} | {v for r in report["rows"]
                                                                     for v in r.get("also_in") or []}
    assert named == set(variants)  # every variant's rows land in the one report
    assert "| 1 | " in (tmp_path / "sweep" / "report.md").read_text()
    # compress gate judges the same report, rebuilt from every variant's hash-checked bench results (issue 29 F8)
    from compress.compare import load_report

    _, judged = load_report(tmp_path / "sweep")
    written = json.loads((tmp_path / "sweep" / "report.json").read_text())
    assert judged["verified"] and json.loads(json.dumps(judged["rows"])) == written["rows"]
