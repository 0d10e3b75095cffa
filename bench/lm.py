"""`python -m bench lm`: distillation of SmolLM2-135M-Instruct (recipes/smollm2-distill.yaml).

Three students of the same 15 teacher layers are scored on the same held-out teacher-style text (200 of the
teacher's own completions that no student trained on):
- untrained: the layers copied from the teacher, no training (the distill stage's quality before training);
- control: trained for the same time budget on the recipe's human text (the critics' lines the prompts were
  made from) instead of the teacher's answers, cross-entropy only (`--set stages.1.train_on=data
  --set stages.1.losses=null --set stages.1.loss=sequence`);
- distilled: trained on the teacher's 1,800 training completions (the recipe as shipped).
The recipe's bench gives the ONNX rows: tokens per second, time to first token, size, for teacher and students.
"""

from __future__ import annotations

import shutil

from bench.common import ROOT, WORK, row, run_compress, write_results

RECIPE = ROOT / "recipes" / "smollm2-distill.yaml"


def main(argv: list[str] | None = None) -> None:
    """`--no-control`: the shipped recipe only (the control student costs another distill budget, ~25 minutes)."""
    argv = list(argv or [])
    shipped = run_compress(RECIPE, WORK / "smollm2-distill")
    control = None if "--no-control" in argv else run_control(shipped)
    data = summarize(shipped, control)
    write_results("smollm2", render(data), data)


def run_control(shipped: dict) -> dict:
    control_dir = WORK / "smollm2-control"
    if not control_dir.exists():  # the teacher and its completions are the same: start from a copy (cached)
        shutil.copytree(WORK / "smollm2-distill", control_dir)
    # no teacher at all in the control: human text, cross-entropy only (token-kl would run the teacher online)
    # and the layers the shipped run chose (layers auto would measure them again, on the human text)
    chosen = shipped["manifest"]["stages"]["distill"]["metrics"].get("layer_choice", {}).get("layers")
    same_layers = [f"stages.1.student.from_teacher={{layers: {chosen}}}"] if chosen else []
    return run_compress(RECIPE, control_dir, "stages.1.train_on=data", "stages.1.losses=null",
                        "stages.1.loss=sequence", *same_layers)


def summarize(shipped: dict, control: dict | None) -> dict:
    distill = shipped["manifest"]["stages"]["distill"]["metrics"]
    generate = shipped["manifest"]["stages"]["generate"]["metrics"]
    report = shipped["report"]
    onnx = {_label(r): r for r in report["rows"] if r.get("status") == "ok" and r["variant"].endswith(".onnx")}
    students = {"untrained": distill["quality_before"]}
    if control:
        students["control (human text, same budget)"] = control["manifest"]["stages"]["distill"]["metrics"][
            "quality_after"]
    students["distilled (teacher's text)"] = distill["quality_after"]
    distilled, untrained = distill["quality_after"], distill["quality_before"]
    teacher = row(report, "teacher.onnx")  # the fp32 ONNX teacher in onnxruntime: every ratio's denominator
    teacher4, student4 = _fastest_int4(onnx, "teacher"), _fastest_int4(onnx, "student")
    stage_seconds = {k: v["seconds"] for k, v in shipped["manifest"]["stages"].items()}
    cached = [k for k, v in shipped["manifest"]["stages"].items() if v.get("cache") == "hit"]
    # a cached stage's recorded time is the run that computed it: the sum is the recipe's time, the command's is not
    recipe_seconds = sum(stage_seconds.values()) if cached else shipped["wall_seconds"]
    passed = {
        "distilled perplexity < untrained": distilled["perplexity"] < untrained["perplexity"],
        "student has at most half the teacher's layers": distill["student_layers"] * 2 <= distill["teacher_layers"],
        ">= 2,000 teacher completions": generate["completions"] >= 2000,
        # issue 30's bars
        "distilled perplexity <= 8 (held-out teacher text)": distilled["perplexity"] <= 8,
        "int4 student >= 4x the fp32 teacher's tokens/s": student4["tokens_per_s"] >= 4 * teacher["tokens_per_s"],
        "int4 teacher >= 2.5x the fp32 teacher's tokens/s": teacher4["tokens_per_s"] >= 2.5 * teacher["tokens_per_s"],
        "int4 teacher perplexity within 10% (teacher text and human text)": all(
            teacher4["quality"].get(k, float("inf")) <= 1.1 * teacher["quality"][k]
            for k in ("perplexity", "human_perplexity") if k in teacher["quality"]),
        "recipe <= 45 minutes": recipe_seconds <= 45 * 60,
    }
    if control:
        passed["distilled perplexity < control"] = distilled["perplexity"] < students[
            "control (human text, same budget)"]["perplexity"]
    return {
        "generate": generate, "distill": distill, "teacher_torch": distill["teacher_quality"],
        "students_torch": students, "onnx_rows": onnx,
        "control_int4": row(control["report"], "student.int4-weight.onnx") if control else None,
        "stage_seconds": stage_seconds, "cached_stages": cached, "recipe_seconds": recipe_seconds,
        "int4_judged": {"teacher": _label(teacher4), "student": _label(student4)},
        "wall_seconds": shipped["wall_seconds"], "cpu": report.get("environment", {}).get("cpu", {}),
        "passed": passed,
    }


def render(d: dict) -> str:
    g, dist = d["generate"], d["distill"]
    cpu = d.get("cpu") or {}
    flags = ", ".join(k for k, v in (cpu.get("flags") or {}).items() if v)
    control = "then the same recipe with `--set stages.1.train_on=data` as the control" if d["control_int4"] else (
        "`--no-control`: no control student this time")
    lines = [
        "# Distillation of SmolLM2-135M-Instruct", "",
        f"Produced by `python -m bench lm` (recipes/smollm2-distill.yaml, {control}). CPU only: "
        f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} cores ({flags}). {_took(d)}", "",
        f"- Teacher completions: {g['completions']:,} ({g['train']:,} train, {g['eval']:,} held out), "
        f"{g['mean_completion_tokens']} tokens on average, {g['finished_by_eos']:,} ended by the teacher; "
        f"written in {g['seconds'] / 60:.1f} min.",
        f"- Student: {dist['student_layers']} of the teacher's {dist['teacher_layers']} layers"
        f"{_layers(dist)}, {dist['student_params'] / 1e6:.1f}M of {dist['teacher_params'] / 1e6:.1f}M parameters "
        f"(the tied embedding table, 28.3M, is frozen); losses {', '.join(dist['losses'])}; {dist['steps']} steps in "
        f"{dist['train_seconds'] / 60:.1f} min ({dist['samples_per_s']} sequences/s).", "",
        "## Quality on held-out teacher-style text (PyTorch fp32)", "",
        f"{dist['eval_sequences']} held-out completions of the teacher; perplexity of the completion tokens given "
        "the prompt; agreement = share of those positions where the model's greedy next token is the teacher's.", "",
        "| model | perplexity | agreement |", "|---|---|---|",
        f"| teacher (30 layers) | {d['teacher_torch']['perplexity']:.2f} | 1.0000 |",
    ]
    for name, q in d["students_torch"].items():
        lines.append(f"| student, {name} | {q['perplexity']:.2f} | {q['agreement']:.4f} |")
    lines += ["", "## ONNX variants (the recipe's bench)", "",
              "Greedy generation through the key/value cache, 64-token prompt, 32 new tokens, batch 1, 1 thread, "
              "3 interleaved rounds; quality with onnxruntime on the same held-out teacher text and on held-out "
              "human-written reviews (the recipe's data). `[genai]`: the onnxruntime-genai format, timed through "
              "onnxruntime-genai (scored through onnxruntime on the same graph); the others through onnxruntime. Speed-up: tokens/s over teacher.onnx's.", "",
              "| variant | size MB | TTFT ms | ms/token | tokens/s | speed-up | perplexity | human-text perplexity | "
              "agreement |", "|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(d["onnx_rows"].items(), key=lambda kv: (not kv[0].startswith("teacher"), "int4" in kv[0], "[genai]" in kv[0]))
    base = d["onnx_rows"]["teacher.onnx"]["tokens_per_s"]
    if d["control_int4"]:
        rows.append(("control student.int4-weight.onnx (its own run)", d["control_int4"]))
    for name, r in rows:
        q = r["quality"]
        human = f"{q['human_perplexity']:.2f}" if "human_perplexity" in q else "-"
        lines.append(f"| {name} | {r['size_mb']:.1f} | {r['ttft_ms']:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}x | {q['perplexity']:.2f} | {human} | "
                     f"{q['agreement']:.4f} |")
    judged = d.get("int4_judged") or {}
    lines += ["", "## Criteria", "", f"The int4 criteria judge each role's fastest int4 row: "
              f"{', '.join(judged.values())}.", ""] + [f"- {k}: {'yes' if v else 'NO'}" for k, v in d["passed"].items()]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in d["stage_seconds"].items()), ""]
    return "\n".join(lines)


def _layers(dist: dict) -> str:
    chosen = (dist.get("layer_choice") or {}).get("layers")
    return f" (chosen by measured importance: {chosen})" if chosen else ""


def _label(r: dict) -> str:
    return r["variant"] + (" [genai]" if r.get("runtime") == "onnxruntime-genai" else "")


def _fastest_int4(rows: dict, role: str) -> dict:
    int4 = [r for r in rows.values() if r["variant"].startswith(f"{role}.") and "int4" in r["variant"]]
    return max(int4, key=lambda r: r["tokens_per_s"])


def _took(d: dict) -> str:
    minutes = d.get("recipe_seconds", d["wall_seconds"]) / 60
    if not d.get("cached_stages"):
        return f"The recipe took {minutes:.1f} minutes end to end."
    return (f"The recipe's stages took {minutes:.1f} minutes ({', '.join(d['cached_stages'])} cached from an earlier "
            f"run of the same recipe: their times are that run's; this command took {d['wall_seconds'] / 60:.1f}).")
