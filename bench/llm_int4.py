"""`python -m bench.llm_int4 [option ...]`: the int4-weight options on the SmolLM2-135M teacher (issue 30).

The teacher arrives as a GGUF file whose linear weights are Q4_1 (4-bit, blocks of 32 along the input, a float
scale and minimum per block) and whose tied embedding is Q8_0: its fp32 ONNX export is those de-quantized
weights. Each option runs bench/recipes/smollm2-int4.yaml (generate 160 completions, export, int4-weight,
bench) with `--set stages.2.int4.<field>=<value>`, in one work folder (generate and export are cached), so each
row's ratios come from one bench run: the fp32 teacher and that int4 variant, interleaved. Quality: perplexity
on 32 held-out teacher completions and on the recipe's 200 held-out Rotten Tomatoes lines (human text), and
next-token agreement with the fp32 teacher on the teacher text.
"""

from __future__ import annotations

import subprocess
import sys

from bench.common import ROOT, WORK, row, run_compress, write_results

RECIPE = ROOT / "bench" / "recipes" / "smollm2-int4.yaml"
OPTIONS = {  # name: recipe overrides of the quantize stage's int4 options (causal-lm's defaults: q4_1, asymmetric,
    # accuracy_level 4, vocabulary 8-bit)
    "rtn-sym-vocab4 (the old default)": ["algorithm=rtn", "symmetric=true", "embedding_bits=4"],
    "rtn-asym-vocab4": ["algorithm=rtn", "embedding_bits=4"],
    "rtn-asym-vocab8": ["algorithm=rtn"],
    "q4_1-vocab8": ["algorithm=q4_1"],
    "q4_1-vocab8-fp32-compute": ["algorithm=q4_1", "accuracy_level=0"],
    "q4_1-vocab8-block64": ["algorithm=q4_1", "block_size=64"],
    "rtn-sym-vocab8": ["algorithm=rtn", "symmetric=true"],
    "k-quant-asym-vocab8": ["algorithm=k-quant"],
    "gptq-asym-vocab8": ["algorithm=gptq"],
    "hqq-vocab8": ["algorithm=hqq"],
}


def main(argv: list[str]) -> None:
    """argv: the options to run (name prefixes; default all); `--work NAME`: another work folder under
    bench/.work (a copy of llm-int4, so that options run side by side); `--out NAME`: the results file's name."""
    work, out = "llm-int4", "llm-int4"
    while argv[:1] in (["--work"], ["--out"]):
        work, out = (argv[1], out) if argv[0] == "--work" else (work, argv[1])
        argv = argv[2:]
    names = [n for n in OPTIONS if not argv or any(n.startswith(a) for a in argv)]
    rows = {}
    for name in names:
        sets = [f"stages.2.int4.{s}" for s in OPTIONS[name]]
        result = run_compress(RECIPE, WORK / work, *sets)
        fp32, int4 = row(result["report"], "teacher.onnx"), row(result["report"], "teacher.int4-weight.onnx")
        rows[name] = {"sets": sets, "fp32": fp32, "int4": int4}
        print(line(name, rows[name]), flush=True)
        write_results(out, render(rows), rows)  # after each option: a long sweep keeps what it measured


def line(name: str, r: dict) -> str:
    f, q = r["fp32"], r["int4"]
    fq, qq = f["quality"], q["quality"]
    return (f"| {name} | {q.get('settings', '')} | {q['size_mb']:.1f} | {q['tokens_per_s']:.1f} / {f['tokens_per_s']:.1f} | "
            f"{q['tokens_per_s'] / f['tokens_per_s']:.2f}x | {qq['perplexity']:.3f} ({fq['perplexity']:.3f}) "
            f"{qq['perplexity'] / fq['perplexity'] - 1:+.1%} | {qq['human_perplexity']:.2f} ({fq['human_perplexity']:.2f}) "
            f"{qq['human_perplexity'] / fq['human_perplexity'] - 1:+.1%} | {qq['agreement']:.4f} | "
            f"{qq['human_agreement']:.4f} |")


def cpu() -> str:
    out = subprocess.run(["lscpu"], text=True, capture_output=True).stdout
    model = next((x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("Model name")), "?")
    flags = [f for f in ("avx2", "avx512_vnni", "amx_int8") if f" {f}" in out]
    return f"{model}; flags {', '.join(flags) or 'none of avx2/avx512_vnni/amx'}"


def render(rows: dict) -> str:
    lines = ["# int4-weight options on the SmolLM2-135M-Instruct teacher (issue 30, parts 1 and 5)", "",
             f"Produced by `python -m bench.llm_int4` on 2 cores ({cpu()}), shared with other jobs: compare "
             "the ratios, each measured in one run (fp32 teacher and int4 variant interleaved, 3 rounds), not "
             "absolute tokens/s across rows.", "",
             "Bench: greedy decoding through the key/value cache, 64-token prompt, 32 new tokens, batch 1, 1 thread "
             "(the recipe's). Quality with onnxruntime: perplexity on 32 held-out teacher completions and on 200 "
             "held-out Rotten Tomatoes lines (human-written, never trained on); agreement = share of scored "
             "positions where the variant's greedy next token is the fp32 teacher's. In brackets: the fp32 "
             "teacher of the same run.", "",
             "| option | settings | size MB | tokens/s int4 / fp32 | speed-up | teacher-text ppl (fp32) | "
             "human ppl (fp32) | agreement teacher text | agreement human text |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [line(name, r) for name, r in rows.items()]
    lines += ["", "fp32 teacher size: " + ", ".join(f"{r['fp32']['size_mb']:.1f} MB" for r in list(rows.values())[:1]),
              "", "Each row: `compress run bench/recipes/smollm2-int4.yaml --set stages.2.int4.<field>=<value>` "
              "(the overrides are in bench/llm_int4.py's OPTIONS).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
