"""Issue 33: compress's int8 of the teacher against every Optimum quantize preset this CPU supports, alone.

    python -m bench peers --setup                                   # once: Optimum's venv
    python -m bench.peers_int8 --teacher-onnx RUN/artifacts/teacher.onnx [--rounds 5] [--texts 300]

RUN: a run of the quickstart recipe with `--set 'stages=[{kind: export, opset: 17, optimize: true}]'`.

The full `python -m bench peers` reruns the quickstart; this times only the teacher's int8 models, in one process,
interleaved (bench/peers_measure.py), at b1 and b32, s128 and the texts' real lengths, 1 thread, with cosine to
the PyTorch fp32 teacher on held-out reviews. compress's models are made from the fused fp32 teacher bundle
(export optimize: true) in each int8-dynamic form (compress/int8_form.py), per-channel and per-tensor.
Writes bench/results/<date>-<machine>-peers-int8.md/.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
from pathlib import Path

from bench.common import machine_tag, write_results
from bench.peers import PEERS, QUICKSTART, TEACHER, VENVS, optimum_presets, optimum_steps, run_timed

OUT = PEERS / "int8"
MAX_LOSS_POINTS = 1.0  # issue 33: at most 1 point of cosine x100 lost against the fp32 teacher
COMPRESS_FORMS = {"fused": True, "matmul-integer": True, "matmul-integer per-tensor": False}


def optimum_int8(teacher_dir: Path, presets: list[str]) -> dict:
    """{variant: model path} of Optimum's int8 models of the plain export, one per preset and per-channel or not."""
    cli = VENVS["optimum"][0] / "bin" / "optimum-cli"
    if not cli.is_file():
        raise SystemExit("Optimum is not installed: run `python -m bench peers --setup`")
    out = OUT / "optimum"
    shutil.rmtree(out, ignore_errors=True)
    steps, made = optimum_steps(str(cli), out, presets)
    found = {}
    for name, command in steps.items():
        if "O2" in name:
            continue
        command = [str(teacher_dir) if c == "{teacher}" else c for c in command]
        print(f"optimum: {name}", flush=True)
        r = run_timed(command, out / "logs" / f"{name.replace(' ', '_')}.log")
        if r["rc"]:
            print(f"  failed: {r['tail'][-300:]}")
    for name, (path, used) in made.items():
        if "int8" in name and "O2" not in name and path.is_file():
            found[name] = path
    return found


def compress_int8(teacher_onnx: Path) -> dict:
    """{variant: model path}: compress's int8-dynamic of the fused fp32 teacher in each form."""
    from compress.stages import quantize_int8
    from compress.stages.quantize import Int8Options

    found = {}
    for label, per_channel in COMPRESS_FORMS.items():
        folder = OUT / "compress" / label.replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        scratch = folder / "src"
        scratch.mkdir(parents=True)
        for file in teacher_onnx.glob("model.onnx*"):
            shutil.copy2(file, scratch / file.name)
        shutil.copy2(teacher_onnx / "config.json", folder / "config.json")  # kept_float reads the architecture
        opts, options = Int8Options(per_channel=per_channel), {}
        build = quantize_int8.int8_dynamic if label == "fused" else quantize_int8.int8_portable
        print(f"compress: teacher.int8-dynamic {label}", flush=True)
        build(opts, scratch / "model.onnx", folder / "model.onnx", options)
        shutil.rmtree(scratch)
        found[f"compress: teacher.int8-dynamic {label}"] = folder / "model.onnx"
    return found


def ratios(measured: dict, ours: str, theirs: str) -> dict:
    """theirs' p50 / ours' p50 per round, median, per cell kind: > 1 means compress is faster."""
    from bench.peers_measure import median_ratio

    out = {}
    for key, cell in measured["cells"].items():
        if cell["variant"] != ours:
            continue
        other = measured["cells"].get(key.replace(ours, theirs, 1))
        if other:
            out[key.split("|", 1)[1]] = round(median_ratio(other["rounds_p50_ms"], cell["rounds_p50_ms"])["median"], 3)
    return out


def render(data: dict) -> str:
    cells, quality = data["measured"]["cells"], data["quality"]
    keys = [f"b{b}" for b in data["measured"]["batches"]] + [f"b{b}|real" for b in data["measured"]["real_batches"]]
    lines = [f"# compress int8 vs Optimum's presets, teacher only ({data['date']}, {data['machine']})", "",
             f"CPU: {data['cpu']} ({data['cores']} cores); int8 flags: {', '.join(data['int8_flags'])}; Optimum "
             f"presets this CPU supports: {', '.join('--' + p for p in data['presets'])}.",
             f"Method: one process, {data['measured']['rounds']} interleaved rounds, 1 thread, s{data['measured']['seq']}"
             f" and the texts' real lengths (`real`); cosine to the PyTorch fp32 teacher on {data['texts']} held-out "
             "reviews. The machine was shared with other jobs: compare ratios within this run only.", "",
             "| variant | " + " | ".join(f"{k} p50 ms" for k in keys) + " | cosine | points lost |",
             "|---|" + "---|" * (len(keys) + 2)]
    for name in data["variants"]:
        q = quality.get(name, {}).get("cosine")
        row = [f"{cells[f'{name}|{k}']['p50_ms']:.2f}" if f"{name}|{k}" in cells else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {q:.4f} | {(1 - q) * 100:.2f} |")
    lines += ["", f"Fastest Optimum preset within {MAX_LOSS_POINTS:g} point at b1: **{data['comparator']}**.", ""]
    for name, by in data["vs_comparator"].items():
        lines.append(f"- {name} vs {data['comparator']}: " + ", ".join(f"{k} {v:.2f}x" for k, v in by.items()))
    lines += ["", f"Verdict (>= 1.1x at b1 and b32, <= {MAX_LOSS_POINTS:g} point lost): {data['verdict']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench import peers_measure as pm
    from compress.data import load_dataset
    from compress.recipe import load_recipe
    from compress.sources import package_path
    from compress.targets.cpu import cpu_info
    from compress.tasks.common import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-onnx", type=Path, required=True, help="the fused fp32 teacher bundle")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--reuse", action="store_true", help="reuse the int8 models made last time")
    parser.add_argument("--only", nargs="+", help="time only variants whose names end with one of these (a "
                        "confirmation run: written under bench/.work, not bench/results)")
    args = parser.parse_args(argv)

    cpu = cpu_info()
    presets = optimum_presets(cpu["flags"], cpu["arch"])
    teacher_dir = package_path(TEACHER)
    if args.reuse:
        found = json.loads((OUT / "models.json").read_text())
        models = {k: Path(v) for k, v in found.items()}
    else:
        models = {**optimum_int8(teacher_dir, presets), **compress_int8(args.teacher_onnx)}
        (OUT / "models.json").write_text(json.dumps({k: str(v) for k, v in models.items()}, indent=1))
    if args.only:
        models = {k: v for k, v in models.items() if any(k.endswith(end) for end in args.only)}
    variants = [pm.Variant(name, name.split(":")[0], path) for name, path in models.items()]
    reference = pm.Variant("pytorch: fp32 teacher", "pytorch", teacher_dir)
    recipe = load_recipe(QUICKSTART)
    texts = load_dataset(recipe.data).eval.texts[: args.texts]
    tokenizer = load_tokenizer(teacher_dir)
    print("scoring quality", flush=True)
    quality = pm.quality([reference, *variants], texts, tokenizer, recipe.data.max_length, reference=reference.name)
    print(f"measuring {len(variants)} variants, {args.rounds} interleaved rounds", flush=True)
    measured = pm.measure(variants, texts, tokenizer, batches=(1, 32), seq=128, rounds=args.rounds, threads=1,
                          real_batches=(1, 32), max_length=recipe.data.max_length)
    within = [v.name for v in variants if v.tool == "optimum"
              and (1 - quality[v.name]["cosine"]) * 100 <= MAX_LOSS_POINTS and f"{v.name}|b1" in measured["cells"]]
    comparator = min(within, key=lambda n: measured["cells"][f"{n}|b1"]["p50_ms"]) if within else None
    ours = [v.name for v in variants if v.tool == "compress"]
    vs = {name: ratios(measured, name, comparator) for name in ours} if comparator else {}
    good = [n for n in ours if (1 - quality[n]["cosine"]) * 100 <= MAX_LOSS_POINTS
            and vs.get(n) and min(vs[n].get("b1", 0), vs[n].get("b32", 0)) >= 1.1]
    verdict = (f"met by {', '.join(good)}" if good else "not met: " + "; ".join(
        f"{n} b1 {vs[n].get('b1', float('nan')):.2f}x, b32 {vs[n].get('b32', float('nan')):.2f}x" for n in vs))
    data = {"date": datetime.date.today().isoformat(), "machine": machine_tag(), "cpu": cpu.get("model"),
            "cores": cpu.get("cores"), "cpu_flags": cpu.get("flags"),
            "int8_flags": sorted(f for f, on in cpu["flags"].items() if on and ("vnni" in f or "avx" in f
                                                                                or "amx" in f or "dot" in f)),
            "presets": presets, "texts": len(texts), "variants": [v.name for v in variants],
            "comparator": comparator, "vs_comparator": vs, "verdict": verdict, "quality": quality,
            "measured": measured,
            "p50_rounds_median": {k: statistics.median(c["rounds_p50_ms"]) for k, c in measured["cells"].items()}}
    if args.only:
        (OUT / "confirm.md").write_text(render(data))
    else:
        write_results("peers-int8", render(data), data)
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
