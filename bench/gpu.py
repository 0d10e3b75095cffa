"""`python -m bench gpu [--cpu] [--minutes 1,3] [--results DIR] [--set k=v ...]`: both sides of the GPU trade.

One prepared script for a lent GPU machine (issue 18), rehearsed on the CPU by the test suite (`--cpu`):
1. Distillation on the accelerator: the quickstart's student (bench/recipes/gpu-distill.yaml) trained for 1 and
   3 minutes in ONE run directory (training resumes from its checkpoint, so the curve costs 3 minutes), then
   exported, quantized and benched on the CPU as usual after each point: cosine and top-10 agreement per point.
2. The CUDA execution provider: fp32, fp16 and int8 variants of the last point's models on CUDAExecutionProvider
   (IO binding on), batch 1 and 32, with `session.get_providers()` recorded in every row (a silent CPU fallback
   shows as such), beside the same models' CPU rows (batch 1, 1 thread) and the teacher in PyTorch on the same
   GPU, fp32 and fp16.
Writes <date>-<device>-gpu.md and .json into --results (default bench/results; on the device machine: $OUT),
again after each phase, so a run stopped part-way keeps what it measured.
Without CUDA (or with --cpu) every CUDA figure is reported as not measured, with the reason: nothing is estimated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

from bench.common import ROOT, WORK, run_compress

RECIPE = ROOT / "bench" / "recipes" / "gpu-distill.yaml"
# The same recipe on 2 CPU cores (AMD EPYC, bf16 training), `compress run recipes/quickstart.yaml`, 2026-11-30:
CPU_CURVE = ("recipes/quickstart.yaml on 2 CPU cores (README, Quickstart): 4 minutes, 902 steps, fp32 student "
             "cosine 0.9482, int8-dynamic 0.9447 / top-10 0.628")


def environment(use_cuda: bool) -> dict:
    import onnxruntime as ort
    import torch

    cuda = use_cuda and torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "used_cuda": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}


def _quality(report: dict, variant: str) -> dict:
    rows = [r for r in report["rows"] if r["variant"] == variant and r.get("status") == "ok"]
    return rows[0]["quality"] if rows else {}


def distill_curve(work: Path, minutes: list[float], sets: list[str], save) -> tuple[list[dict], dict]:
    points, result = [], {}
    for m in minutes:
        result = run_compress(RECIPE, work, f"stages.0.max_minutes={m}", *sets)
        metrics = result["manifest"]["stages"]["distill"]["metrics"]
        points.append({"minutes": m, "steps": metrics.get("steps"), "samples_per_s": metrics.get("samples_per_s"),
                       "precision": metrics.get("precision"),
                       "train_seconds": metrics.get("train_seconds"), "resumed_from_step": metrics.get("resumed_from_step"),
                       "fp32": _quality(result["report"], "student.onnx"),
                       "int8": _quality(result["report"], "student.int8-dynamic.onnx"),
                       "wall_seconds": round(result["wall_seconds"], 1)})
        save(points)
    return points, result


def torch_rows(model_dir: Path, texts: list[str], batch_sizes: list[int], cuda: bool, seq_len: int = 128) -> list[dict]:
    """The teacher in PyTorch on the device: p50 of timed forward passes (synchronised), fp32 and fp16."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    device = torch.device("cuda" if cuda else "cpu")
    names = {torch.float32: "fp32", torch.float16: "fp16"}  # as the ONNX rows name them
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for dtype in (torch.float32, torch.float16):
        if dtype is torch.float16 and not cuda:
            rows.append({"runtime": "torch", "precision": "fp16", "status": "not measured",
                         "reason": "fp16 PyTorch is a GPU measurement; no CUDA device"})
            continue
        model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        for b in batch_sizes:
            batch = tok((texts * b)[:b], padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="pt").to(device)
            rows.append({"runtime": "torch", "device": str(device), "precision": names[dtype],
                         "batch_size": b, "seq_len": seq_len, "status": "ok",
                         "p50_ms": _p50(lambda: model(**batch), cuda)})
    return rows


def _p50(call, cuda: bool, warmup: int = 10, iters: int = 50) -> float:
    import torch

    samples = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            started = time.perf_counter()
            call()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 3)


def onnx_rows(report: dict) -> list[dict]:
    keep = ("variant", "runtime", "precision", "provider", "provider_used", "status", "reason", "batch_size",
            "seq_len", "threads", "size_mb")
    return [{**{k: r.get(k) for k in keep}, "p50_ms": r.get("p50_ms"),
             "quality": r.get("quality")} for r in report["rows"] if r["runtime"] == "onnxruntime"]


def _f(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [f"# GPU: distill on the accelerator, deploy on the CPU ({data['date']})", "",
             f"Device: {env['device']} (torch {env['torch']}, CUDA available: {env['cuda_available']}); "
             f"onnxruntime {env['onnxruntime']} providers {', '.join(env['ort_providers'])}; {env['cpu_count']} CPUs.",
             f"Command: `{data['command']}`.", "", "## Distillation curve (student benched on the CPU)", "",
             "| minutes | steps | samples/s | precision | fp32 cosine | fp32 top-10 | int8 cosine | int8 top-10 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in data["curve"]:
        lines.append(f"| {p['minutes']} | {p['steps']} | {_f(p['samples_per_s'], '.0f')} | "
                     f"{p.get('precision') or '-'} | "
                     f"{_f(p['fp32'].get('cosine'))} | {_f(p['fp32'].get('top10_agreement'))} | "
                     f"{_f(p['int8'].get('cosine'))} | {_f(p['int8'].get('top10_agreement'))} |")
    lines += ["", f"For comparison, {CPU_CURVE}.", "", "## Execution providers and PyTorch", "",
              "| model | runtime | precision | provider asked -> used | batch | p50 ms | cosine | status |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["onnx_rows"]:
        lines.append(f"| {r['variant']} | onnxruntime | {r['precision']} | {r['provider']} -> {r['provider_used'] or '-'}"
                     f" | {r['batch_size']} | {_f(r['p50_ms'], '.3f')} | {_f((r.get('quality') or {}).get('cosine'))}"
                     f" | {r['status']} {r.get('reason') or ''} |")
    for r in data["torch_rows"]:
        lines.append(f"| teacher | torch | {r['precision']} | {r.get('device', '-')} | {r.get('batch_size', '-')} | "
                     f"{_f(r.get('p50_ms'), '.3f')} | - | {r['status']} {r.get('reason', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench gpu")
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU (hides any GPU from torch)")
    parser.add_argument("--minutes", default="1,3", help="training minutes of the curve's points")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=WORK / "gpu")
    parser.add_argument("--set", action="append", default=[], dest="sets", help="recipe overrides (key=value)")
    args = parser.parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # children too: training and the torch timing stay on the CPU
    env = environment(use_cuda=not args.cpu)
    minutes = [float(m) for m in args.minutes.split(",")]
    tag = "cpu-rehearsal" if not env["used_cuda"] else env["device"].split()[-1].lower()
    data = {"date": datetime.date.today().isoformat(), "environment": env, "curve": [], "onnx_rows": [],
            "torch_rows": [], "command": "python -m bench gpu " + " ".join(argv)}
    stem = args.results / f"{data['date']}-{tag}-gpu"

    def save(curve=None) -> None:
        if curve is not None:
            data["curve"] = curve
        args.results.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(markdown(data))
        stem.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")

    _, last = distill_curve(args.work, minutes, args.sets, save)
    data["onnx_rows"] = onnx_rows(last["report"])  # the CPU rows of the last point
    # The CUDA rows: the same run, bench only, on the GPU provider (unavailable -> a row with the reason). The CPU
    # rows at batch 32 and the PyTorch baseline on the CPU are left out: minutes of device time for no GPU figure
    # (the teacher in PyTorch on the GPU is timed below).
    last = run_compress(RECIPE, args.work, f"stages.0.max_minutes={minutes[-1]}", *args.sets,
                        "stages.3.providers=[cuda]", "stages.3.batch_sizes=[1, 32]", "stages.3.io_binding=auto",
                        "stages.3.baseline=false")
    data["onnx_rows"] += onnx_rows(last["report"])
    save()
    teacher = Path(last["manifest"]["artifacts"]["teacher"]["path"])
    teacher = teacher if teacher.is_absolute() else args.work / teacher
    texts = ["a quietly moving film about memory and loss", "the plot never finds its footing"]
    data["torch_rows"] = torch_rows(teacher, texts, [1, 32], env["used_cuda"])
    save()
    print(f"wrote {stem}.md and .json")
    return 0
