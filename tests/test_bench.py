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


def test_bench_run_measures_onnx_and_torch_and_marks_missing_providers(exported):
    results, samples, ctx = run_bench(exported, "bench-a", providers=["cpu", "cuda"], rounds=2)

    rows = {row["id"]: row for row in results["rows"]}
    assert list(rows) == [  # torch baseline once per setting, ONNX per provider
        "teacher|cpu|b1|s16|t1", "teacher.onnx|CPUExecutionProvider|b1|s16|t1",
        "teacher.onnx|CUDAExecutionProvider|b1|s16|t1",
    ]
    for row in rows.values():
        if row["provider"] == "CUDAExecutionProvider":  # this machine has no GPU build of onnxruntime
            assert row["status"] == "unavailable" and row["reason"] == "onnxruntime-gpu not installed"
            assert row["provider_request"] == "cuda" and row["target"] == "local" and row["emulated"] is False
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
    local = results["targets"]["local"]
    assert local["onnxruntime"] and local["cores"] and "avx2" in local["cpu_flags"] and local["emulated"] is False
    assert ctx.metrics["ran"] == 2 and ctx.metrics["unavailable"] == 1


def test_bench_run_scores_quality_without_a_timed_baseline(exported):
    results, _, _ = run_bench(exported, "bench-b", baseline=False, rounds=1)

    (row,) = results["rows"]
    assert row["variant"] == "teacher.onnx" and row["runtime"] == "onnxruntime" and row["status"] == "ok"
    assert row["quality"]["cosine"] > 0.999 and 0 <= row["quality"]["top10_agreement"] <= 1


def test_bench_run_makes_a_row_per_session_setting(exported):
    results, _, _ = run_bench(exported, "bench-c", baseline=False, rounds=1, graph_optimization=["all", "basic"],
                              execution_mode=["sequential", "parallel"], inter_op_threads=[1], eval_size=8)

    rows = {row["id"]: row for row in results["rows"]}
    assert list(rows) == [
        "teacher.onnx|CPUExecutionProvider|b1|s16|t1", "teacher.onnx|CPUExecutionProvider|b1|s16|t1|parallel",
        "teacher.onnx|CPUExecutionProvider|b1|s16|t1|opt-basic",
        "teacher.onnx|CPUExecutionProvider|b1|s16|t1|opt-basic|parallel",
    ]
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["graph_optimization"] in ("all", "basic") and row["execution_mode"] in ("sequential", "parallel")
        assert row["quality"]["cosine"] > 0.999


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"providers": ["cpu", "cuda"], "strict_providers": True}, "ProviderUnavailable",
         "cuda: unavailable (onnxruntime-gpu not installed)"),
        ({"providers": ["arm"], "strict_providers": True}, "ProviderUnavailable", "arm: unavailable (this host is"),
        ({"targets": ["local", "pi5"]}, "StageError", "bench targets ['pi5'] are not declared"),
    ],
)
def test_bench_run_stops_before_measuring_when(exported, settings, error, message):
    with pytest.raises(Exception) as caught:
        run_bench(exported, "bench-strict", **settings)

    assert type(caught.value).__name__ == error and message in str(caught.value)


def test_bench_config_rejects_bad_provider_lists():
    for providers in (["cpu", "cpu"], [{"cuda": {}, "cpu": {}}], [""]):
        with pytest.raises(ValueError):
            bench.Config(providers=providers)
    assert bench.Config(providers=["cpu", {"cuda": {"device_id": 1}}]).providers[1] == {"cuda": {"device_id": 1}}


def test_cli_run_strict_providers_fails_with_one_message(tiny_bert, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "texts.txt"
    data.write_text("".join(f"text number {i} is here\n" for i in range(40)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_bert, data=data) + "    providers: [cpu, cuda]\n")

    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--strict-providers",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600, check=False)

    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cuda: unavailable (onnxruntime-gpu not installed)" in errors[0]
    assert "Traceback" not in proc.stderr


def test_bench_run_times_real_lengths_beside_fixed_ones(exported):
    results, samples, ctx = run_bench(exported, "bench-real", seq_lens=[16, "data"], batch_sizes=[1, 4], rounds=1)

    rows = {row["id"]: row for row in results["rows"]}
    real = [r for r in rows.values() if r["seq_len"] == "data"]
    assert {r["id"] for r in real} == {"teacher|cpu|b1|sdata|t1", "teacher.onnx|CPUExecutionProvider|b1|sdata|t1",
                                       "teacher|cpu|b4|sdata|t1", "teacher.onnx|CPUExecutionProvider|b4|sdata|t1"}
    median = results["settings"]["real_median_tokens"]
    for row in real:
        assert row["status"] == "ok", row
        lengths = row["real_lengths"]
        assert row["seq_len_median"] == median and lengths["min"] < lengths["max"]  # the texts differ in length
        assert lengths["groups"] == (20 if row["batch_size"] == 1 else 5)  # eval_size 20: every text, in groups
        assert all(len(r) % lengths["groups"] == 0 for r in samples[row["id"]])  # whole passes over the inputs
        assert row["quality"] == rows[row["id"].replace("sdata", "s16")]["quality"]  # scored once per variant


def test_bench_inputs_at_real_lengths_are_unpadded_at_batch_one(exported, tmp_path):
    import numpy as np

    from compress.stages.bench_engine import Inputs
    from compress.targets.harness import real_groups
    from compress.tasks import get_task

    texts = ["short", "a much longer review of the film than the first one", "medium length text"]
    inputs = Inputs(tmp_path, texts, 64, get_task("sentence-embedding"))

    with np.load(inputs.timing(exported["artifacts"]["teacher"].path, 1, "data")) as data:
        single = real_groups({k: data[k] for k in data.files})
    with np.load(inputs.timing(exported["artifacts"]["teacher"].path, 2, "data")) as data:
        paired = real_groups({k: data[k] for k in data.files})

    assert len(single) == 3 and len({g["input_ids"].shape[1] for g in single}) == 3
    assert all(g["input_ids"].shape[0] == 1 and g["attention_mask"].all() for g in single)  # no padding at b1
    assert len(paired) == 1 and paired[0]["input_ids"].shape == (2, single[1]["input_ids"].shape[1])
    assert not paired[0]["attention_mask"].all()  # b2: padded to the longest of the pair


def test_report_labels_real_length_rows_and_compares_within_the_setting(exported):
    from compress.report import decision, table_cells

    results, _, _ = run_bench(exported, "bench-real-report", seq_lens=[16, "data"], rounds=1)

    rows = decision.decision_rows(results["rows"], "cosine", 0.02)
    median = results["settings"]["real_median_tokens"]
    by_id = {r["id"]: r for r in rows}
    real, fixed = by_id["teacher.onnx|CPUExecutionProvider|b1|sdata|t1"], by_id["teacher.onnx|CPUExecutionProvider|b1|s16|t1"]
    assert real["setting"] == f"b1/real(med {median:g})/t1" and fixed["setting"] == "b1/s16/t1"
    teacher_real = by_id["teacher|cpu|b1|sdata|t1"]
    assert teacher_real["is_baseline"] and real["speedup"] == pytest.approx(teacher_real["p50_ms"] / real["p50_ms"])
    assert decision.row_label(real).endswith(f"b1/real(med {median:g})/t1") and decision.row_key(real) != decision.row_key(fixed)
    assert "real(med N)" in decision.real_lengths_note(rows) and decision.real_lengths_note([fixed]) == ""
    assert real["setting"] in table_cells(real, "cosine")  # report.md, the terminal table and the gate's table


@pytest.mark.parametrize(("seq_lens", "message"), [
    ([0], "at least 1 token"), ([128, 128], "listed twice"), (["all"], "Input should be"),
])
def test_bench_config_rejects_bad_sequence_lengths(seq_lens, message):
    with pytest.raises(ValueError, match=message):
        bench.Config(seq_lens=seq_lens)


def test_recipe_refuses_real_lengths_for_causal_lm():
    recipe = ("version: 1\nname: lm\ntask: causal-lm\nteacher: {source: x}\ndata: {source: y}\n"
              "stages:\n  - kind: export\n  - kind: bench\n    seq_lens: [data]\n")

    with pytest.raises(Exception, match="not offered for task causal-lm"):
        parse_recipe(recipe)


def test_bench_run_keeps_per_item_scores_and_probes_labelled_embeddings(exported, tmp_path):
    """Issue 31: with labels, embedding rows get probe and kNN accuracy, and every row keeps the per-item scores
    the report's bootstrap intervals resample."""
    data = tmp_path / "labelled.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([[f"review number {i} was {'good' if i % 3 else 'rather dull and long'}",
                           "fresh" if i % 3 else "rotten"] for i in range(80)])
    recipe = parse_recipe(RECIPE.format(model=exported["artifacts"]["teacher"].path, data=data).replace(
        "eval_size: 24}", "eval_size: 24, label_field: label}"))
    ctx = make_ctx(exported["run_dir"], recipe, "bench-labels", exported["artifacts"])

    (artifact,) = bench.run(bench.Config(**{**FAST, "rounds": 1, "name": "bench-labels"}), ctx)

    rows = json.loads((artifact.path / "results.json").read_text())["rows"]
    for row in rows:
        items = row["quality_items"]
        assert set(items) == {"cosine", "top10_agreement", "probe_accuracy", "knn_accuracy"}, row["id"]
        assert len(items["cosine"]) == 20 == len(items["knn_accuracy"]) and len(items["probe_accuracy"]) == 10
        for metric, values in items.items():
            assert row["quality"][metric] == pytest.approx(sum(values) / len(values), abs=1e-4)
