"""`python -m bench [distill | lm [--no-control] | cnn | gpu [--cpu] ... | mpnet [key=value ...] | peers [--setup] ... |
ablation [--minutes X] ... | frontier [--reuse] ... | llm-peers [--setup] ... | llm-int4 [option ...]]`: compress's own benchmarks, written to
bench/results/.

Each benchmark runs real recipes with the installed `compress` and writes a markdown and a JSON file named
<date>-<machine>-<benchmark> under bench/results/. Run from the repository root.
"""

from __future__ import annotations

import sys

from bench import ablation, cnn, distill, frontier, gpu, llm_int4, llm_peers, lm, mpnet, peers

BENCHMARKS = {
    "distill": distill.main,  # both tasks
    "distill-embedding": lambda: distill.main(("embedding",)),
    "lm": lm.main,  # SmolLM2: generate 2,000 completions, distill, export, int4, bench; and a control student
    "cnn": cnn.main,  # edge CNN with TF "same" padding: fp32 vs int8-static vs fp16 (and int8-dynamic) at b1
    "gpu": lambda: gpu.main([]),  # distill on the accelerator, CUDA EP rows; `--cpu` rehearses it
    "mpnet": lambda: mpnet.main(),  # all-mpnet-base-v2 -> MiniLM + projection (recipes/mpnet-to-small.yaml)
    "peers": lambda: peers.main([]),  # against Optimum and Olive; `python -m bench peers --help` for its options
    "llm-peers": lambda: llm_peers.main([]),  # SmolLM2 through compress's ONNX, llama.cpp and onnxruntime-genai
    "llm-int4": lambda: llm_int4.main([]),  # issue 30: the int4-weight options on the SmolLM2 teacher, one row each
    "ablation": lambda: ablation.main([]),  # issue 16: one row per technique mix; `python -m bench ablation --help`
    "frontier": lambda: frontier.main([]),  # issue 31: teacher, layer-cut, pruned, static, int8s; one table
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["peers"]:
        return peers.main(argv[1:])
    if argv[:1] == ["gpu"]:
        return gpu.main(argv[1:])
    if argv[:1] == ["llm-peers"]:
        return llm_peers.main(argv[1:])
    if argv[:1] == ["lm"]:  # --no-control: the shipped recipe only
        lm.main(argv[1:])
        return 0
    if argv[:1] == ["llm-int4"]:
        llm_int4.main(argv[1:])
        return 0
    if argv[:1] == ["ablation"]:
        return ablation.main(argv[1:])
    if argv[:1] == ["frontier"]:
        return frontier.main(argv[1:])
    if argv[:1] == ["mpnet"]:  # the rest: recipe overrides (--set), e.g. stages.0.max_minutes=5
        mpnet.main(argv[1:])
        return 0
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
