"""Issue 32: the same 4-variant sweep run one variant after another and fanned out on a local Ray.

    python -m bench.ray_sweep [--rounds 2]

The tests' tiny BERT and texts (tests/test_fanout.py's recipe: export, quantize x {int8-dynamic, fp16}, bench x
batch {1, 2}), each round `compress run` sequentially then with `--executor ray` (A B A B), each in a fresh run
folder, as subprocesses: wall times include Python, torch and Ray start-up. Writes
bench/results/<date>-<machine>-ray-sweep.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, write_results

RAY_INIT = ("import os, time, ray; t = time.monotonic(); ray.init(num_cpus=os.cpu_count(), include_dashboard=False); "
            "print(time.monotonic() - t); ray.shutdown()")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_sweep")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_bert, make_tiny_texts
    from test_fanout import BENCH, BENCH_AXIS, RECIPE

    work = Path(tempfile.mkdtemp(prefix="ray-sweep-", dir="/tmp"))
    try:
        recipe = work / "recipe.yaml"
        recipe.write_text(RECIPE.format(model=make_tiny_bert(work / "bert"), data=make_tiny_texts(work / "t.csv"),
                                        last=BENCH, axis=BENCH_AXIS))
        runs = []
        for round_ in range(args.rounds):
            for executor in ("local", "ray"):
                runs.append({"round": round_, "executor": executor, **_run(recipe, work / f"{executor}-{round_}",
                                                                           executor)})
                print(f"round {round_} {executor}: {runs[-1]['wall_s']:.1f} s", file=sys.stderr)
            runs.append({"round": round_, "executor": "ray.init alone", "wall_s": _ray_init()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = {"cpu": _cpu(), "rounds": args.rounds, "runs": runs}
    write_results("ray-sweep", _markdown(data), data)
    return 0


def _run(recipe: Path, out: Path, executor: str) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(out),
                           "--executor", executor], cwd=ROOT, text=True, capture_output=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"compress run --executor {executor} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {v["name"]: {s: e["seconds"] if e["cache"] == "computed" else 0.0 for s, e in v["stages"].items()}
              for v in manifest["sweep"]["variants"]}
    return {"wall_s": round(wall, 2), "stage_s": stages, "hosts": sorted({v["host"] for v in
                                                                        manifest["sweep"]["variants"]})}


def _ray_init() -> float:
    proc = subprocess.run([sys.executable, "-c", RAY_INIT], capture_output=True, text=True, check=True)
    return round(float(proc.stdout.strip().splitlines()[-1]), 2)


def _cpu() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    flags = [f for f in ("avx2", "avx512_vnni", "amx_tile") if f in text]
    return {"model": model, "cores": os.cpu_count(), "flags": flags, "load_avg": os.getloadavg()}


def _markdown(data: dict) -> str:
    runs = data["runs"]
    wall = {e: [r["wall_s"] for r in runs if r["executor"] == e] for e in ("local", "ray", "ray.init alone")}
    ratios = [s["wall_s"] / r["wall_s"] for s, r in zip([r for r in runs if r["executor"] == "local"],
                                                        [r for r in runs if r["executor"] == "ray"])]
    seq = [r for r in runs if r["executor"] == "local"]
    stage_sum = statistics.median(sum(sum(v.values()) for v in r["stage_s"].values()) for r in seq)
    lines = ["# A 4-variant sweep: sequential vs Ray (issue 32)", "",
             f"CPU: {data['cpu']['model']}, {data['cpu']['cores']} cores, flags {', '.join(data['cpu']['flags'])}; "
             f"load average at the end {', '.join(f'{x:.1f}' for x in data['cpu']['load_avg'])}. The machine was "
             "shared with other sessions: absolute times are noisy; the ratio is measured within each round "
             "(sequential then Ray, A B A B).", "",
             "Sweep: tests/test_fanout.py's recipe (tiny BERT): export, quantize x {int8-dynamic, fp16}, bench x "
             "batch {1, 2}: 4 variants, 7 stages computed, 5 shared. `compress run` as a subprocess, a fresh run "
             "folder each time; Ray: a local Ray started by the command (`--executor ray`).", "",
             "| round | sequential s | Ray s | speed-up (sequential / Ray) |", "|---|---|---|---|"]
    for i, (s, r, x) in enumerate(zip(wall["local"], wall["ray"], ratios)):
        lines.append(f"| {i} | {s:.1f} | {r:.1f} | {x:.2f}x |")
    lines += ["", f"Median speed-up: **{statistics.median(ratios):.2f}x**. Ray start-up alone (`ray.init`, "
              f"this machine): median {statistics.median(wall['ray.init alone']):.1f} s. Sum of the computed "
              f"stages' seconds in the sequential runs (median): {stage_sum:.1f} s.", "",
              "Stage seconds per variant (computed stages; 0 = shared), round 0:", ""]
    for executor in ("local", "ray"):
        run = next(r for r in runs if r["executor"] == executor)
        lines.append(f"- {executor}: " + "; ".join(f"{v}: " + ", ".join(f"{s} {t:.1f}" for s, t in st.items())
                                                   for v, st in run["stage_s"].items()))
    lines += ["", "Run: `python -m bench.ray_sweep --rounds 2`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
