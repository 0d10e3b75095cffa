"""Issue 19's measurement: quantization of an edge CNN with TensorFlow-style "same" padding.

recipes/edge-cnn.yaml: a MobileNet-style network (recipes/edge_cnn.py:mobilenet, depthwise-separable blocks,
run-time asymmetric padding before stride-2 convolutions) trained here on scikit-learn's digits at 32x32, exported,
then quantized to int8-static (quant_pre_process, per-channel QDQ), fp16 and, for the record, int8-dynamic
(ConvInteger). Agreement with the fp32 model's predictions on the 360 held-out images, and latency at batch 1,
1 thread, as per-round ratios to the fp32 ONNX model over interleaved rounds (the bench stage's A B C A B C).
Acceptance: int8-static agreement >= 0.97 and faster than fp32 at batch 1; fp16 valid with agreement >= 0.99.
Then issue 34's measurement (bench/cnn_wide.py): the same network with the weakness of real edge CNNs, benched on
photos outside its classes, and the calibration choices tried.
"""

from __future__ import annotations

import os
import platform
import statistics

from bench import cnn_wide
from bench.common import ROOT, WORK, row, run_compress, write_results

RECIPE = ROOT / "recipes" / "edge-cnn.yaml"
ROUNDS = 7
SCHEMES = ("int8-static", "fp16", "int8-dynamic")


def speedups(fp32: dict, variant: dict) -> dict:
    """fp32 p50 / variant p50, per interleaved round, and their median (above 1: the variant is faster)."""
    per_round = [a / b for a, b in zip(fp32["rounds_p50_ms"], variant["rounds_p50_ms"]) if a and b]
    return {"median_of_rounds": statistics.median(per_round) if per_round else None,
            "rounds": [round(r, 4) for r in per_round]}


def measure() -> dict:
    schemes = "[" + ", ".join(SCHEMES) + "]"
    result = run_compress(RECIPE, WORK / "cnn", f"stages.2.schemes={schemes}", "stages.2.check_size=360",
                          f"stages.3.rounds={ROUNDS}")
    report, stages = result["report"], result["manifest"]["stages"]
    fp32 = row(report, "teacher-finetuned.onnx")
    checks = stages["quantize"]["metrics"]
    variants = {"fp32": {"row": fp32, "speedup": {"median_of_rounds": 1.0}, "check": {}}}
    for scheme in SCHEMES:
        name = f"teacher-finetuned.{scheme}.onnx"
        variant = row(report, name)
        variants[scheme] = {"row": variant, "speedup": speedups(fp32, variant),
                            "check": checks[name].get("check", {}), "options": checks[name].get("options", {})}
    static, fp16 = variants["int8-static"], variants["fp16"]
    passed = {
        "int8-static agreement >= 0.97": (static["row"]["quality"].get("agreement") or 0) >= 0.97,
        "int8-static faster than fp32 at b1": (static["speedup"]["median_of_rounds"] or 0) > 1.0,
        "fp16 valid (onnx.checker, session load)": fp16["check"].get("checker") == "ok",
        "fp16 agreement >= 0.99": (fp16["row"]["quality"].get("agreement") or 0) >= 0.99,
    }
    return {"wall_seconds": result["wall_seconds"], "cpu": cpu_name(),
            "stage_seconds": {k: v["seconds"] for k, v in stages.items()},
            "finetune": stages["finetune"]["metrics"].get("quality_after"), "variants": variants,
            "passed": passed, "rows": report["rows"]}


def cpu_name() -> str:
    from compress.targets.cpu import cpu_info

    return cpu_info().get("model") or platform.processor() or platform.machine()


def render(d: dict) -> str:
    lines = ["# Edge CNN quantization (issue 19)", "",
             "recipes/edge-cnn.yaml: MobileNet-style CNN with TF-style \"same\" padding (13 depthwise-separable "
             "blocks, 352k parameters), trained here on scikit-learn's digits upsampled to 32x32; 360 held-out "
             f"images. Latency: onnxruntime CPU, batch 1, 1 thread, {ROUNDS} interleaved rounds; speed-up = median "
             "of per-round fp32/variant p50 ratios. The machine was shared with other sessions (noisy timings; "
             "quality figures are not affected).", "",
             "| variant | size MB | accuracy | agreement with the fp32 teacher | p50 ms b1 | speed-up vs fp32 ONNX | "
             "notes |", "|---|---|---|---|---|---|---|"]
    notes = {"fp32": "ONNX export of the fine-tuned model",
             "int8-static": "quant_pre_process + static QDQ, per-channel weights",
             "fp16": "IO kept fp32, shape subgraph kept fp32, graph sorted",
             "int8-dynamic": "ConvInteger: not offered by default for CNNs"}
    for name, v in d["variants"].items():
        r, q = v["row"], v["row"]["quality"]
        lines.append(f"| {name} | {r['size_mb']:.2f} | {q.get('accuracy', 0):.4f} | {q.get('agreement', 0):.4f} | "
                     f"{r['p50_ms']:.3f} | {v['speedup']['median_of_rounds']:.2f}x | {notes[name]} |")
    lines += ["", "Acceptance:", ""]
    lines += [f"- {k}: {'yes' if ok else 'NO'}" for k, ok in d["passed"].items()]
    static = d["variants"]["int8-static"]
    lines += ["", f"int8-static per-round speed-ups: {static['speedup']['rounds']}; pre-processing: "
              f"{static.get('options', {}).get('preprocess')}.", "",
              "Run: `python -m bench cnn` (wall time {:.0f} s).".format(d["wall_seconds"]), ""]
    if "issue_34" in d:
        lines += cnn_wide.render(d["issue_34"])
        lines += ["", f"CPU: {d['cpu']}. The machine was shared with other sessions while this ran: the speed-ups "
                  "are ratios within one run (interleaved rounds), not absolute timings; another run will differ. "
                  f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (training on a loaded 2-core "
                  "machine runs about 10x faster with 1).", ""]
    return "\n".join(lines)


def main() -> None:
    data = measure()
    data["issue_34"] = cnn_wide.measure()
    write_results("cnn", render(data), data)
