"""Issue 20: a real second run whose student is made worse fails `compress compare` and `compress gate --baseline`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import make_tiny_bert

RECIPE = """\
version: 1
name: gate-real
task: sentence-embedding
teacher: {source: model, license: apache-2.0}
data: {source: texts.csv, text_field: text, eval_size: 16}
stages:
  - kind: distill
    student: {from_teacher: {layers: [0, 1, 2, 3]}}
    max_steps: 2
    eval_every: 0
    batch_size: 8
  - kind: export
    parity_texts: 4
  - kind: bench
    batch_sizes: [1]
    seq_lens: [32]
    warmup: 1
    min_iterations: 5
    min_seconds: 0
    rounds: 1
gates: {max_quality_drop: 0.02}
"""


def cli(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250"}, timeout=900)


@pytest.mark.slow
def test_gate_fails_a_real_run_whose_student_got_worse(tmp_path):
    make_tiny_bert(tmp_path / "model", layers=4, hidden=64)
    (tmp_path / "texts.csv").write_text("text\n" + "".join(f"review {i}: the film was {'fine ' * (i % 5)}and moving\n"
                                                             for i in range(60)))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    good = cli(tmp_path, "run", "recipe.yaml", "--out", "good")
    # The same recipe with a worse student, honestly measured: a freshly initialised one (a tiny random teacher's
    # output hardly changes when layers are dropped, so fewer layers would not make it worse).
    worse = cli(tmp_path, "run", "recipe.yaml", "--out", "worse", "--set",
                "stages.0.student={config: {num_hidden_layers: 1}}")
    assert good.returncode == 0 and worse.returncode == 0, good.stderr[-2000:] + worse.stderr[-2000:]

    compared = cli(tmp_path, "compare", "good", "worse")
    gated = cli(tmp_path, "gate", "worse/report.json", "--baseline", "good/report.json")
    same = cli(tmp_path, "gate", "good/report.json", "--baseline", "good/report.json")

    quality_line = next(line for line in compared.stdout.splitlines() if line.startswith("quality regressions"))
    assert compared.returncode == 1 and "student.onnx" in quality_line, compared.stdout[-2000:]
    assert gated.returncode == 1 and "max-quality-regression" in gated.stdout + gated.stderr
    assert "Traceback" not in gated.stdout + gated.stderr + compared.stderr
    assert same.returncode == 0, same.stdout[-2000:] + same.stderr[-2000:]
