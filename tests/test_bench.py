"""Stage bench on a tiny exported BERT: real subprocess measurements, unavailable providers, quality."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from rich.console import Console

from compress.artifacts import Artifact, sha256_path
from compress.context import RunContext
from compress.recipe import parse_recipe
from compress.stages import bench, export

RECIPE = """\
version: 1
name: tiny-bench
task: sentence-embedding
teacher: {{source: {model}}}
data: {{source: {data}, eval_size: 24}}
stages:
  - kind: export
    parity_texts: 8
  - kind: bench
"""
FAST = {"warmup": 1, "min_iterations": 3, "min_seconds": 0.0, "seq_lens": [16], "eval_size": 20}


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory) -> dict:
    """A run dir holding the teacher (tiny BERT) and its exported ONNX bundle `teacher.onnx`."""
    root = tmp_path_factory.mktemp("bench")
    data = root / "texts.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([[f"review number {i} was {'good' if i % 3 else 'rather dull and long'}"] for i in range(80)])
    recipe = parse_recipe(RECIPE.format(model=tiny_bert, data=data))
    teacher = Artifact("teacher", tiny_bert, "hf-model", sha256_path(tiny_bert), {"role": "teacher"})
    artifacts = {"teacher": teacher}
    ctx = make_ctx(root / "run", recipe, "export", artifacts)
    for artifact in export.run(recipe.stages[0], ctx):
        artifacts[artifact.name] = artifact
    return {"run_dir": root / "run", "recipe": recipe, "artifacts": artifacts}


def make_ctx(run_dir: Path, recipe, stage: str, artifacts: dict) -> RunContext:
    return RunContext(run_dir=run_dir, recipe=recipe, stage_name=stage, artifacts=dict(artifacts),
                      console=Console(stderr=True, quiet=True))


def run_bench(exported: dict, name: str, **settings) -> tuple[dict, dict, RunContext]:
    cfg = bench.Config(**{**FAST, **settings, "name": name})
    ctx = make_ctx(exported["run_dir"], exported["recipe"], name, exported["artifacts"])
    (artifact,) = bench.run(cfg, ctx)
    assert artifact.name == "bench" and artifact.format == "bench"
    results = json.loads((artifact.path / "results.json").read_text())
    samples = json.loads((artifact.path / "samples.json").read_text())
    return results, samples, ctx


@pytest.mark.parametrize(
    ("short", "full"),
    [("cpu", "CPUExecutionProvider"), ("CUDA", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"),
     ("openvino", "OpenVINOExecutionProvider"), ("MyExecutionProvider", "MyExecutionProvider")],
)
def test_provider_name_maps_short_names(short, full):
    assert bench.provider_name(short) == full


def test_bench_run_measures_onnx_and_torch_and_marks_missing_providers(exported):
    results, samples, ctx = run_bench(exported, "bench-a", providers=["cpu", "cuda"], rounds=2)

    rows = {row["id"]: row for row in results["rows"]}
    assert list(rows) == [  # torch baseline once per setting, ONNX per provider
        "teacher|cpu|b1|s16|t1", "teacher.onnx|CPUExecutionProvider|b1|s16|t1",
        "teacher.onnx|CUDAExecutionProvider|b1|s16|t1",
    ]
    for row in rows.values():
        if row["provider"] == "CUDAExecutionProvider":  # this machine has no GPU build of onnxruntime
            assert row["status"] == "unavailable" and "CUDAExecutionProvider" in row["reason"]
            assert row["latency_ms"] is None and row["throughput"] is None and row["quality"] == {}
            continue
        assert row["status"] == "ok", row
        assert row["provider_used"] == ("cpu" if row["runtime"] == "torch" else "CPUExecutionProvider")
        assert len(row["latency_ms"]["rounds_p50"]) == 2 and row["latency_ms"]["n"] >= 2 * 3
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["throughput"] == pytest.approx(row["batch_size"] * 1000 / row["latency_ms"]["p50"])
        assert row["peak_rss_mb"] > 10 and row["size_mb"] > 1
        assert row["quality"]["cosine"] > 0.999  # fp32 ONNX and the teacher itself match the reference
        assert [len(s) for s in samples[row["id"]]] >= [3, 3] and sum(map(len, samples[row["id"]])) == row["latency_ms"]["n"]
    torch_row = rows["teacher|cpu|b1|s16|t1"]
    assert torch_row["runtime"] == "torch" and torch_row["quality"]["cosine"] == pytest.approx(1.0)
    # ONNX peak RSS is the harness's own, not the torch-laden parent's (ru_maxrss survives exec on Linux).
    assert rows["teacher.onnx|CPUExecutionProvider|b1|s16|t1"]["peak_rss_mb"] < torch_row["peak_rss_mb"]
    assert results["environment"]["versions"]["onnxruntime"] and results["environment"]["cpu"]["cores"]
    assert results["settings"]["eval_size"] == 20 and results["settings"]["rounds"] == 2
    assert ctx.metrics["ran"] == 2 and ctx.metrics["unavailable"] == 1


def test_bench_run_scores_quality_without_a_timed_baseline(exported):
    results, _, _ = run_bench(exported, "bench-b", baseline=False, rounds=1)

    (row,) = results["rows"]
    assert row["variant"] == "teacher.onnx" and row["runtime"] == "onnxruntime" and row["status"] == "ok"
    assert row["quality"]["cosine"] > 0.999 and 0 <= row["quality"]["top10_agreement"] <= 1
