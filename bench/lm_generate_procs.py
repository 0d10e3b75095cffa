"""The generate stage in one process vs several (`generate: {processes: N}`), on recipes/smollm2-distill.yaml's
teacher and prompts, interleaved round by round (A B A B) in one run; the stage's own recorded seconds (model
load, worker start and generation) and whether the completions are the same text.

    python -m bench.lm_generate_procs [--count 256] [--rounds 2] [--processes 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from pathlib import Path

import yaml

from bench.common import ROOT, WORK, run_compress, write_results


def recipe(count: int, processes: int, folder: Path) -> Path:
    """The shipped recipe, its generate stage only, `count` completions."""
    doc = yaml.safe_load((ROOT / "recipes" / "smollm2-distill.yaml").read_text())
    stage = {**doc["stages"][0], "count": count, "eval_size": min(16, count - 1), "processes": processes}
    doc.update(name=f"generate-{processes}", stages=[stage])
    path = folder / f"generate-{processes}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_generate_procs")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    folder = WORK / "lm-generate-procs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    seconds: dict[int, list[float]] = {n: [] for n in args.processes}
    texts: dict[int, str] = {}
    for round_ in range(args.rounds):
        for n in args.processes:
            out = folder / f"r{round_}-p{n}"
            done = run_compress(recipe(args.count, n, folder), out)
            seconds[n].append(done["manifest"]["stages"]["generate"]["metrics"]["seconds"])
            texts[n] = (out / "artifacts" / "generated" / "data.jsonl").read_text()
            print(json.dumps({"round": round_, "processes": n, "seconds": seconds[n][-1]}), flush=True)
    from compress.targets.harness import cpu_environment

    cpu = cpu_environment()
    flags = ", ".join(f for f, on in cpu["cpu_flags"].items() if on)
    base = statistics.median(seconds[args.processes[0]])
    lines = [f"# generate: one process vs several ({cpu['cpu_model']}, {os.cpu_count()} cores: {flags}; "
             f"{args.rounds} interleaved rounds)", "",
             f"recipes/smollm2-distill.yaml's generate stage, {args.count} completions (batches of 32, 48 new tokens, "
             "top-32 kept); the stage's recorded seconds (model load, worker start, generation).", "",
             "| processes | seconds per round | median | vs first |", "|---|---|---|---|"]
    for n, values in seconds.items():
        lines.append(f"| {n} | {', '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} | "
                     f"{statistics.median(values) / base:.2f}x |")
    first = texts[args.processes[0]]
    same = {n: text == first for n, text in texts.items()}
    lines += ["", f"Same completions as {args.processes[0]} process(es): "
              + ", ".join(f"{n}: {'yes' if s else 'no'}" for n, s in same.items()), ""]
    write_results(f"lm-generate-procs-{args.count}", "\n".join(lines), {"seconds": seconds, "same_text": same,
                                                                     "count": args.count, "cpu": cpu})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
