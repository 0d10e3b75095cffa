"""Issue 3's measurement: what distillation buys, in one run per task.

Sentence embedding: a 3-layer student distilled from all-MiniLM-L6-v2 for at most 15 minutes of CPU training;
its cosine to the teacher on 1,000 held-out sentences, and the speed of its int8 ONNX against the teacher in
PyTorch fp32 at batch 1, sequence 128 (medians of 5 interleaved rounds, ratios per round).
Text classification (recipes/sentiment-edge.yaml): accuracy kept by the int8 student against the fine-tuned
teacher, and its speed against the teacher's fp32 ONNX.
"""

from __future__ import annotations

import json
import statistics

from bench.common import ROOT, WORK, results_path, row, run_compress, write_results

EMBEDDING = ROOT / "bench" / "recipes" / "distill-embedding.yaml"
SENTIMENT = ROOT / "recipes" / "sentiment-edge.yaml"


def ratios(slow: dict, fast: dict) -> dict:
    """Speed-up of `fast` over `slow`: per interleaved round, and of the medians over all samples."""
    per_round = [s / f for s, f in zip(slow["rounds_p50_ms"], fast["rounds_p50_ms"])]
    return {"median_of_rounds": statistics.median(per_round), "rounds": per_round,
            "of_p50s": slow["p50_ms"] / fast["p50_ms"]}


def embedding() -> dict:
    result = run_compress(EMBEDDING, WORK / "distill-embedding")
    report, stages = result["report"], result["manifest"]["stages"]
    distill = stages["distill"]["metrics"]
    teacher, student = row(report, "teacher", "torch"), row(report, "student.int8-dynamic.onnx")
    speed = ratios(teacher, student)
    return {
        "wall_seconds": result["wall_seconds"], "distill": distill,
        "stage_seconds": {k: v["seconds"] for k, v in stages.items()},
        "student_int8": student, "teacher_torch": teacher, "speedup": speed,
        "cosine_after": student["quality"].get("cosine"),
        "passed": {"cosine >= 0.90": (student["quality"].get("cosine") or 0) >= 0.90,
                   "speed-up >= 3.5x": speed["median_of_rounds"] >= 3.5},
        "rows": report["rows"],
    }


def sentiment() -> dict | None:
    if not SENTIMENT.is_file():
        return None
    result = run_compress(SENTIMENT, WORK / "sentiment-edge")
    report, stages = result["report"], result["manifest"]["stages"]
    teacher_onnx = next(r for r in report["rows"] if r["variant"].startswith("teacher") and r["precision"] == "fp32"
                        and r["runtime"] == "onnxruntime")
    student = row(report, "student.int8-dynamic.onnx")
    teacher_acc = teacher_onnx["quality"]["accuracy"]
    speed = ratios(teacher_onnx, student)
    kept = student["quality"]["accuracy"] / teacher_acc
    return {
        "wall_seconds": result["wall_seconds"], "stage_seconds": {k: v["seconds"] for k, v in stages.items()},
        "distill": stages.get("distill", {}).get("metrics"), "teacher_onnx": teacher_onnx, "student_int8": student,
        "accuracy_kept": kept, "speedup": speed,
        "passed": {"accuracy kept >= 97%": kept >= 0.97, "speed-up >= 3x": speed["median_of_rounds"] >= 3.0},
        "rows": report["rows"],
    }


def _table(rows: list[dict], headline: str) -> list[str]:
    lines = [f"| variant | runtime | size MB | p50 ms | p90 ms | {headline} | flags |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['variant']} | {r['runtime']} | {r['size_mb']:.1f} | {r['p50_ms']:.2f} | "
                         f"{r['p90_ms']:.2f} | {r['headline']:.4f} | {'; '.join(r['flags'])} |")
    return lines


def render(emb: dict, sent: dict | None) -> str:
    d = emb["distill"]
    before, after = d.get("quality_before") or {}, d.get("quality_after") or {}
    lines = [
        "# Distillation benchmark (issue 3)", "",
        "Produced by `python -m bench distill` on this machine; every number below comes from that one command.",
        "Latency is p50 at batch 1, sequence 128, 1 thread, CPU execution provider; speed-ups are medians of",
        "per-round ratios over interleaved rounds (the machine is shared and noisy).", "",
        "## Sentence embedding: 3-layer student {0, 2, 5} from all-MiniLM-L6-v2", "",
        f"- training: {d.get('steps')} steps in {d.get('train_seconds', d.get('seconds', 0)) / 60:.1f} min "
        f"({d.get('samples_per_s', 0):.0f} samples/s); teacher targets computed once in "
        f"{d.get('precompute_seconds', 0):.0f} s",
        f"- parameters: teacher {d.get('teacher_params', 0):,}, student {d.get('student_params', 0):,}",
        f"- cosine to the teacher on 1,000 held-out sentences: **{emb['cosine_after']:.4f}** for the int8 student "
        f"(fp32 student after training: {after.get('cosine', float('nan')):.4f}; the same student with layers "
        f"dropped and no training: {before.get('cosine', float('nan')):.4f})",
        f"- int8 student vs teacher in PyTorch fp32: **{emb['speedup']['median_of_rounds']:.2f}x** faster "
        f"(per round: {', '.join(f'{x:.2f}' for x in emb['speedup']['rounds'])})",
        "- criteria: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in emb["passed"].items()),
        f"- wall time of the whole recipe: {emb['wall_seconds'] / 60:.1f} min", "",
        *_table(emb["rows"], "cosine"), "",
    ]
    if sent:
        t, s = sent["teacher_onnx"], sent["student_int8"]
        lines += [
            "## Text classification: Rotten Tomatoes fresh/rotten (recipes/sentiment-edge.yaml)", "",
            *([f"_{sent['earlier']}._", ""] if sent.get("earlier") else []),
            f"- fine-tuned teacher (fp32 ONNX) accuracy on the 2,000-row held-out split: {t['quality']['accuracy']:.4f}"
            f", macro-F1 {t['quality'].get('macro_f1', float('nan')):.4f}",
            f"- int8 student accuracy: {s['quality']['accuracy']:.4f} (**{sent['accuracy_kept'] * 100:.1f}%** of the "
            f"teacher's), macro-F1 {s['quality'].get('macro_f1', float('nan')):.4f}",
            f"- int8 student vs teacher fp32 ONNX: **{sent['speedup']['median_of_rounds']:.2f}x** faster",
            "- criteria: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in sent["passed"].items()),
            f"- wall time of the whole recipe: {sent['wall_seconds'] / 60:.1f} min", "",
            *_table(sent["rows"], "accuracy"), "",
        ]
    return "\n".join(lines)


def main(tasks: tuple[str, ...] = ("embedding", "classification")) -> None:
    emb = embedding()
    sent = sentiment() if "classification" in tasks else earlier_sentiment()
    write_results("distill", render(emb, sent), {"embedding": emb, "sentiment": sent})


def earlier_sentiment() -> dict | None:
    """`distill-embedding` re-measures one task: keep today's text-classification results, marked as earlier."""
    path = results_path("distill", ".json")
    if not path.is_file():
        return None
    sent = json.loads(path.read_text()).get("sentiment")
    if sent and not sent.get("earlier"):
        sent["earlier"] = "from an earlier run of `python -m bench distill` the same day"
    return sent
