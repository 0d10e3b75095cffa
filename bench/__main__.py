"""`python -m bench [distill | lm | gpu [--cpu] ... | peers [--setup] ...]`: compress's own benchmarks, written to bench/results/.

Each benchmark runs real recipes with the installed `compress` and writes a markdown and a JSON file named
<date>-<machine>-<benchmark> under bench/results/. Run from the repository root.
"""

from __future__ import annotations

import sys

from bench import distill, gpu, lm, peers

BENCHMARKS = {
    "distill": distill.main,  # both tasks
    "distill-embedding": lambda: distill.main(("embedding",)),
    "lm": lm.main,  # SmolLM2: generate 2,000 completions, distill, export, int4, bench; and a control student
    "gpu": lambda: gpu.main([]),  # distill on the accelerator, CUDA EP rows; `--cpu` rehearses it
    "peers": lambda: peers.main([]),  # against Optimum and Olive; `python -m bench peers --help` for its options
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["peers"]:
        return peers.main(argv[1:])
    if argv[:1] == ["gpu"]:
        return gpu.main(argv[1:])
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        BENCHMARKS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
