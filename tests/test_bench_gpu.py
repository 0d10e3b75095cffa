"""bench/gpu.py rehearsed on the CPU with a tiny model: the script a lent GPU machine runs works end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_rehearses_on_the_cpu_and_reports_cuda_honestly(tmp_path, tiny_bert, tiny_texts):
    results, sets = tmp_path / "results", [
        f"teacher.source={tiny_bert}", f"data.source={tiny_texts}", "data.eval_size=20",
        "stages.0.student.from_teacher.layers=[0]", "stages.0.batch_size=8", "stages.0.eval_every=0",
        "stages.3.rounds=1", "stages.3.seq_lens=[16]",
        "stages.3.warmup=1", "stages.3.min_iterations=3", "stages.3.min_seconds=0"]  # timing is not under test
    args = [sys.executable, "-m", "bench", "gpu", "--cpu", "--minutes", "0.02,0.04", "--results", str(results),
            "--work", str(tmp_path / "work")]
    for item in sets:
        args += ["--set", item]

    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=900)

    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(next(results.glob("*-cpu-rehearsal-gpu.json")).read_text())
    assert [p["minutes"] for p in data["curve"]] == [0.02, 0.04]
    assert data["curve"][1]["resumed_from_step"] >= data["curve"][0]["steps"] > 0  # the second point resumed
    assert all(p["int8"].get("cosine") is not None for p in data["curve"])
    cuda = [r for r in data["onnx_rows"] if r["provider"] == "CUDAExecutionProvider"]
    assert cuda and all(r["status"] != "ok" and r["reason"] for r in cuda)  # no CPU number under the GPU's name
    assert {r["precision"] for r in data["torch_rows"]} == {"fp32", "fp16"}
    assert "not measured" in next(results.glob("*.md")).read_text()
