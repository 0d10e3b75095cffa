"""Where an int8 model's time goes, next to Optimum's: onnxruntime's profiler per operator type, and thread CPU time.

    python -m bench.peers_int8 --teacher-onnx ...            # makes the models (bench/.work/peers/int8/models.json)
    python -m bench.peers_profile [--batch 1] [--only SUFFIX ...] [--rounds 7]

The inputs are the peers bench's own (bench/peers_measure.py: a held-out review padded to 128 tokens, repeated to
the batch), 1 thread. The profile is per run (sum of the operator type's kernel times / runs); the A/B times every
model interleaved round by round and reports the median per-round ratio to the first model, in wall time and in the
calling thread's CPU time: with 1 thread onnxruntime computes on the calling thread, so CPU time leaves out the time
other jobs on a shared machine take from it (wall time does not).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.peers_int8 import OUT


def session(path: Path, profile: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def call(sess, arrays: dict):
    from bench.peers_measure import feeds

    fed, names = feeds(sess, arrays), [sess.get_outputs()[0].name]
    return lambda: sess.run(names, fed)


def op_profile(path: Path, arrays: dict, runs: int = 30) -> dict:
    """{operator type: (ms per run, nodes)} from onnxruntime's profiler, after 5 untimed runs."""
    sess = session(path, profile=True)
    run = call(sess, arrays)
    for _ in range(5 + runs):
        run()
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    trace.parent.rmdir()
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    return {op: (total[op] / (5 + runs) / 1e3, count[op] // (5 + runs)) for op in total}


def ab(paths: dict, arrays: dict, rounds: int, iterations: int) -> dict:
    """{name: (wall ms, cpu ms, wall ratio, cpu ratio)}: medians over rounds; ratio = first model / this one."""
    runs = {name: call(session(path), arrays) for name, path in paths.items()}
    wall, cpu = ({name: [] for name in paths} for _ in range(2))
    for _ in range(rounds):
        for name, run in runs.items():
            run()
            w, c = [], []
            for _ in range(iterations):
                t0, c0 = time.perf_counter(), time.thread_time()
                run()
                c.append(time.thread_time() - c0)
                w.append(time.perf_counter() - t0)
            wall[name].append(statistics.median(w) * 1e3)
            cpu[name].append(statistics.median(c) * 1e3)
    first = next(iter(paths))

    def ratio(by: dict, name: str) -> float:
        return statistics.median(a / b for a, b in zip(by[first], by[name]))
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n]), ratio(wall, n), ratio(cpu, n)) for n in paths}


def main(argv: list[str] | None = None) -> int:
    from bench.peers import TEACHER
    from bench.peers_measure import timing_inputs
    from compress.data import load_dataset
    from compress.recipe import load_recipe
    from compress.sources import package_path
    from compress.tasks.common import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", nargs="+", default=["avx512_vnni --per_channel", "matmul-integer"],
                        help="models whose names end with one of these (the first one found is the baseline)")
    args = parser.parse_args(argv)

    found = json.loads((OUT / "models.json").read_text())
    paths = {n: Path(p) for end in args.only for n, p in found.items() if n.endswith(end)}
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml")
    texts = load_dataset(recipe.data).eval.texts[:300]
    arrays = timing_inputs(load_tokenizer(package_path(TEACHER)), texts, args.batch, 128)
    print(f"b{args.batch}/s128, {int(arrays['attention_mask'][0].sum())} real tokens in row 0, 1 thread, "
          f"cpu: {os.uname().machine}")
    profiles = {name: op_profile(path, arrays, runs=30 if args.batch == 1 else 3) for name, path in paths.items()}
    ops = sorted({op for p in profiles.values() for op in p}, key=lambda op: -max(p.get(op, (0,))[0]
                                                                                   for p in profiles.values()))
    print("| operator | " + " | ".join(f"{n} ms (nodes)" for n in paths) + " |")
    print("|---|" + "---|" * len(paths))
    for op in ops:
        print(f"| {op} | " + " | ".join("{:.3f} ({})".format(*p.get(op, (0, 0))) for p in profiles.values()) + " |")
    print("| all kernels | " + " | ".join(f"{sum(v[0] for v in p.values()):.3f}" for p in profiles.values()) + " |")
    print()
    for name, (w, c, rw, rc) in ab(paths, arrays, args.rounds, 15 if args.batch == 1 else 2).items():
        print(f"{name}: wall {w:.2f} ms, thread CPU {c:.2f} ms; first / this: wall {rw:.2f}x, CPU {rc:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
