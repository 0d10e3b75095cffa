"""`compress bench MODEL` and `compress init` (issue 17): the one-line paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from onnx_models import export_tiny_bert, export_tiny_bert_numeric

from compress import quick

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
FAST = ["--set", "stages.1.rounds=1", "--set", "stages.1.min_seconds=0", "--set", "stages.1.min_iterations=3",
        "--set", "stages.1.warmup=1"]


def _compress(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


def test_init_writes_a_recipe_that_validates_for_every_task(tmp_path, tiny_bert):
    onnx = export_tiny_bert(tmp_path / "onnx")
    cases = [(task, []) for task in quick.TASKS] + [("sentence-embedding", ["--teacher", str(onnx / "model.onnx")])]
    for index, (task, extra) in enumerate(cases):
        path = tmp_path / f"r{index}.yaml"
        made = _compress("init", "--task", task, "--out", str(path), *extra)
        assert made.returncode == 0, made.stderr
        checked = _compress("validate", str(path))
        assert checked.returncode == 0 and "ok" in checked.stdout, checked.stderr
        text = path.read_text()
        assert f"task: {task}" in text and text.startswith("# A starter recipe")
        assert ("kind: distill" in text) == (not extra)  # an ONNX teacher: quantize and bench only


@pytest.mark.parametrize("args, error", [
    (["--task", "translation"], "--task 'translation' is not one of"),
    (["--task", "causal-lm", "--teacher", "{onnx}"], "not supported"),
    (["--out", "{existing}"], "exists; choose another --out or pass --force"),
])
def test_init_refuses_with_one_sentence(tmp_path, args, error):
    onnx = export_tiny_bert(tmp_path / "onnx") if "{onnx}" in args else None
    existing = tmp_path / "there.yaml"
    existing.write_text("x: 1\n")
    args = [a.replace("{onnx}", str(onnx / "model.onnx") if onnx else "").replace("{existing}", str(existing))
            for a in args]
    proc = _compress("init", *args, "--out", str(tmp_path / "new.yaml")) if "--out" not in args else _compress(
        "init", *args)
    assert proc.returncode == 2 and error in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_bench_a_runs_onnx_bundle_in_one_command_and_repeat_it_cached(tmp_path, tiny_bert, tiny_texts):
    recipe = tmp_path / "export.yaml"
    recipe.write_text(f"""version: 1
name: exported
task: sentence-embedding
teacher: {{source: {tiny_bert}}}
data: {{source: {tiny_texts}, eval_size: 30, max_length: 16}}
stages: [{{kind: export}}]
""")
    run = tmp_path / "runs" / "exported"
    assert _compress("run", str(recipe), "--out", str(run)).returncode == 0
    model = run / "artifacts" / "teacher.onnx" / "onnx" / "model.onnx"

    proc = _compress("bench", str(model), "--schemes", "int8-dynamic,fp16", *FAST, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compress: bench-teacher.onnx" in proc.stdout and "teacher.int8-dynamic.onnx" in proc.stdout
    bench_run = tmp_path / "runs" / "bench-teacher.onnx"
    written = (bench_run / "recipe.yaml").read_text()
    assert str(model) in written and "rounds: 1" in written and str(tiny_texts) in written  # the run's own data
    again = _compress("run", str(bench_run / "recipe.yaml"), "--out", str(bench_run))
    assert again.returncode == 0 and again.stderr.count("cached (unchanged config and inputs)") == 2, again.stderr


@pytest.mark.parametrize("kind, extra, error", [
    ("not-onnx", [], "not an ONNX model"),
    ("no-inputs", [], "no recognisable inputs"),
    ("wrong-output", ["--task", "text-classification"], "not logits"),
])
def test_bench_bad_input_is_one_sentence(tmp_path, tiny_texts, kind, extra, error):
    if kind == "not-onnx":
        model = tmp_path / "model.onnx"
        model.write_bytes(b"\x00\x01 not a protobuf" * 40)
    elif kind == "no-inputs":
        import onnx
        from onnx import helper

        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", 1, ["n", 4])],
                                  [helper.make_tensor_value_info("y", 1, ["n", 4])])
        model = tmp_path / "model.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    else:
        model = export_tiny_bert(tmp_path / "onnx") / "model.onnx"
    proc = _compress("bench", str(model), "--data", str(tiny_texts), *extra, cwd=tmp_path)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert error in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


@pytest.mark.parametrize("extra, output, variants", [
    ([], "1013", {"teacher.onnx", "teacher.int8-dynamic.onnx", "teacher.int8-static.onnx",
                  "teacher.int4-weight.onnx", "teacher.fp16.onnx"}),
    (["--schemes", "int8-dynamic", "--set", "teacher.output=1011"], "1011",
     {"teacher.onnx", "teacher.int8-dynamic.onnx"}),
])
def test_bench_an_onnx_export_with_numeric_int64_first_outputs(tmp_path, tiny_texts, extra, output, variants):
    """Issue 34: a sentence-embedding model exported by another tool (int64 outputs first, numeric names, no
    sentence-transformers config, no model card) benches with the licence alone: the task is guessed with its
    evidence, the float pooled output is used (or the token states teacher.output names, pooled by compress), and
    every variant gets cosine and top-10 agreement."""
    import json

    model = export_tiny_bert_numeric(tmp_path / "export")
    for name in ("README.md", "modules.json"):
        (model / name).unlink()
    shutil.rmtree(model / "1_Pooling")
    proc = _compress("bench", str(model / "model.onnx"), "--set", "teacher.license=apache-2.0", "--data",
                     str(tiny_texts), "--set", "data.eval_size=30", *FAST, *extra, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task sentence-embedding, guessed from: outputs 461 int64 [batch_size, sequence_length]" in proc.stderr
    assert "1013 float [batch, 32] beside a tokenizer, with no id2label or labels config: an embedding" in proc.stderr
    assert f"output {output} float" in proc.stderr
    run = tmp_path / "runs" / "bench-export"
    rows = {r["variant"]: r["quality"] for r in json.loads((run / "report.json").read_text())["rows"]}
    assert set(rows) == variants
    assert all(q.get("cosine") is not None and q.get("top10_agreement") is not None for q in rows.values()), rows
    bundle = json.loads((run / "artifacts" / "teacher.onnx" / "compress.json").read_text())
    assert bundle["onnx_input"]["output"] == output
