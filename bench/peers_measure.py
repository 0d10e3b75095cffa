"""The one harness of `python -m bench peers`: every model timed in one process, interleaved, and scored alike.

All ONNX models (Optimum's, Olive's, compress's) and the PyTorch fp32 teacher get a session each up front;
then each round times every variant once per batch size (A B C A B C ...), so a noisy neighbour hits them
alike. Inputs are built once, outside the clock: real held-out sentences padded to exactly `seq` tokens.
Quality is scored with compress's sentence-embedding task code (mean-pooled, normalized embeddings; mean
cosine to the PyTorch fp32 teacher) on the quickstart recipe's held-out split.

Also here: harness fidelity (compress's device harness, run as the bench stage runs it, against a bare
`InferenceSession.run` loop on the same model and inputs) and the pure maths the tests check.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- pure maths (tested without onnxruntime)


def median_ratio(slow_rounds: list[float], fast_rounds: list[float]) -> dict:
    """Speed-up of `fast` over `slow` per round (slow / fast), and the median of those per-round ratios."""
    per_round = [s / f for s, f in zip(slow_rounds, fast_rounds) if s and f]
    return {"median": statistics.median(per_round) if per_round else math.nan, "rounds": per_round}


def spread(values: list[float]) -> float:
    """Run-to-run spread: (max - min) / median of the per-round p50s (0 = identical rounds)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / statistics.median(values)


def fidelity(harness_rounds: list[float], bare_rounds: list[float], tolerance: float = 0.03) -> dict:
    """compress's harness p50 against a bare loop's, per round: the median ratio and whether it is within
    `tolerance` (0.03 = 3%) of 1."""
    ratio = median_ratio(harness_rounds, bare_rounds)
    return {"ratio": ratio["median"], "rounds": ratio["rounds"],
            "within": bool(abs(ratio["median"] - 1) <= tolerance), "tolerance": tolerance,
            "harness_spread": spread(harness_rounds), "bare_spread": spread(bare_rounds)}


def mean_pool(hidden, mask):
    """Mean over real tokens, then L2-normalized: what the sentence-transformers folder of the teacher does."""
    import numpy as np

    m = mask[..., None].astype(hidden.dtype)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- variants and inputs


@dataclass(frozen=True)
class Variant:
    name: str  # unique label, e.g. "optimum: int8 avx2"
    tool: str  # optimum | olive | compress | pytorch
    path: Path  # model.onnx, or the Hugging Face folder for pytorch
    note: str = ""
    tokenizer: Path | None = None  # the model's own tokenizer folder (a trimmed vocabulary); None: the shared one

    @property
    def size_mb(self) -> float:
        if self.tool == "pytorch":
            return sum(p.stat().st_size for p in self.path.glob("*.safetensors")) / 1e6
        data = [p for p in self.path.parent.iterdir() if p.name.startswith(self.path.name) and p.is_file()]
        return sum(p.stat().st_size for p in data) / 1e6  # model.onnx (+ model.onnx_data when external)


def timing_inputs(tokenizer, texts: list[str], batch: int, seq: int) -> dict:
    """As compress's bench stage builds them: real texts padded to exactly `seq` tokens, repeated to `batch`."""
    from compress.tasks.common import tokenize

    return tokenize(tokenizer, [texts[i % len(texts)] for i in range(batch)], seq, pad_to_max=True)


def real_inputs(tokenizer, texts: list[str], batch: int, max_length: int, groups: int = 64) -> list[dict]:
    """As compress's bench stage builds `seq_lens: [data]`: the texts in order, `batch` at a time, each group
    padded only to its longest text (batch 1: no padding), at most `groups` groups."""
    from compress.tasks.common import tokenize

    texts = texts[: batch * groups]
    texts = texts if len(texts) >= batch else [texts[i % len(texts)] for i in range(batch)]
    return [tokenize(tokenizer, texts[i:i + batch], max_length) for i in range(0, len(texts) - batch + 1, batch)]


def feeds(session, arrays: dict) -> dict:
    """The inputs a session declares; token_type_ids (Optimum's exports take it) are zeros for one segment."""
    import numpy as np

    out = {}
    for spec in session.get_inputs():
        out[spec.name] = arrays[spec.name] if spec.name in arrays else np.zeros_like(arrays["input_ids"])
    return out


class Runner:
    """One callable per variant: embeddings from (input_ids, attention_mask) arrays."""

    def __init__(self, variant: Variant, threads: int):
        self.variant = variant
        if variant.tool == "pytorch":
            import torch

            from compress.tasks import sentence_embedding

            torch.set_num_threads(threads or os.cpu_count() or 1)  # 0: every core, as for ONNX
            self.model = sentence_embedding.load_model(variant.path).eval()
            self.session = None
        else:
            from compress.targets.harness import make_session

            self.session = make_session(str(variant.path), "CPUExecutionProvider", threads)
            self.providers = self.session.get_providers()
            outputs = [o.name for o in self.session.get_outputs()]
            # A pooled output when the model has one; else the token states, mean-pooled in embed() (Olive's
            # second output is BERT's CLS pooler, not the model's mean pooling).
            known = [n for n in ("embedding", "sentence_embedding", "last_hidden_state", "token_embeddings")
                     if n in outputs]
            self.output = known[0] if known else outputs[0]

    def prepare(self, arrays: dict | list[dict]):
        """A zero-argument function running the model on pre-built inputs (what the clock times); for a list of
        inputs (real lengths), one such function per input, which time_loop calls in turn."""
        if isinstance(arrays, list):
            return [self.prepare(a) for a in arrays]
        if self.session is None:
            import torch

            args = [torch.from_numpy(arrays[n]) for n in ("input_ids", "attention_mask")]

            def call():
                with torch.inference_mode():
                    return self.model(*args)
            return call
        fed, names = feeds(self.session, arrays), [self.output]
        return lambda: self.session.run(names, fed)

    def embed(self, arrays: dict):
        out = self.prepare(arrays)()
        if self.session is None:
            return out.numpy()
        out = out[0]
        return out if out.ndim == 2 else mean_pool(out, arrays["attention_mask"])


# ---------------------------------------------------------------- the interleaved measurement


def measure(variants: list[Variant], texts: list[str], tokenizer, *, batches=(1, 32), seq: int = 128,
            rounds: int = 5, threads: int = 1, settings: dict | None = None, log=print, real_batches=(),
            max_length: int = 128) -> dict:
    """Time every variant at every batch size, interleaved round by round; per-round p50s kept.

    Cells `<variant>|b<batch>` at `seq` tokens, and `<variant>|b<batch>|real` (real_batches) at the texts' own
    lengths, cycled through in whole passes. A variant with its own tokenizer gets inputs made with it."""
    from compress.targets.harness import real_lengths, summarize, time_loop
    from compress.tasks.common import load_tokenizer

    settings = {1: {"warmup": 3, "min_iterations": 20, "min_seconds": 1.0},
                32: {"warmup": 1, "min_iterations": 5, "min_seconds": 2.0}, **(settings or {})}
    runners = {v.name: Runner(v, threads) for v in variants}
    tokenizers = {v.name: load_tokenizer(v.tokenizer) if v.tokenizer else tokenizer for v in variants}
    calls, lengths = {}, {}
    for v in variants:
        tok = tokenizers[v.name]
        for b in batches:
            calls[(v.name, b, "")] = runners[v.name].prepare(timing_inputs(tok, texts, b, seq))
        for b in real_batches:
            groups = real_inputs(tok, texts, b, max_length)
            calls[(v.name, b, "real")], lengths[(v.name, b)] = runners[v.name].prepare(groups), real_lengths(groups)
    samples: dict = {key: [] for key in calls}
    order = [(b, "") for b in batches] + [(b, "real") for b in real_batches]
    for r in range(rounds):
        for b, kind in order:
            for v in variants:
                got = time_loop(calls[(v.name, b, kind)], **settings.get(b, settings[1]))
                samples[(v.name, b, kind)].append(got)
                log(f"  round {r + 1}/{rounds} b{b}{'/real' if kind else ''} {v.name}: p50 {statistics.median(got):.2f} ms")
    cells = {}
    for (name, b, kind), per_round in samples.items():
        merged = summarize([s for rnd in per_round for s in rnd], b)["latency_ms"]
        rounds_p50 = [statistics.median(rnd) for rnd in per_round]
        cells[f"{name}|b{b}" + (f"|{kind}" if kind else "")] = {
            "variant": name, "batch": b, "seq": "data" if kind else seq, "p50_ms": merged["p50"],
            "p90_ms": merged["p90"], "n": merged["n"], "rounds_p50_ms": rounds_p50, "spread": spread(rounds_p50),
            **({"real_lengths": lengths[(name, b)]} if kind else {})}
    providers = {n: getattr(r, "providers", ["torch-cpu"]) for n, r in runners.items()}
    return {"cells": cells, "providers": providers, "settings": {str(k): v for k, v in settings.items()},
            "rounds": rounds, "threads": threads, "batches": list(batches), "seq": seq,
            "real_batches": list(real_batches)}


def quality(variants: list[Variant], texts: list[str], tokenizer, max_length: int, reference: str) -> dict:
    """compress's sentence-embedding metric for every variant against the `reference` variant's outputs."""
    from compress.tasks import sentence_embedding
    from compress.tasks.common import batches, load_tokenizer, unbatch

    outputs = {}
    for v in variants:
        todo = batches(load_tokenizer(v.tokenizer) if v.tokenizer else tokenizer, texts, max_length, 32)
        runner = Runner(v, 0)  # not timed: every core
        outputs[v.name] = unbatch([runner.embed(b) for b in todo], todo)
        del runner
    ref = outputs[reference]
    return {name: sentence_embedding.quality(ref, out) for name, out in outputs.items()}


# ---------------------------------------------------------------- harness fidelity

BARE = r"""
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
model, inputs, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
with np.load(inputs) as d:
    feed = {i.name: d[i.name] for i in s.get_inputs()}
for _ in range(5):
    s.run(None, feed)
t = []
for _ in range(n):
    t0 = time.perf_counter(); s.run(None, feed); t.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"p50": statistics.median(t), "n": n}))
"""


def harness_fidelity(model: Path, arrays: dict, work: Path, rounds: int = 5, iterations: int = 40) -> dict:
    """compress's bench p50 (targets/harness.py in a subprocess, as the bench stage runs it) against a bare
    `InferenceSession.run` loop in a subprocess, same model and inputs, interleaved round by round."""
    import numpy as np

    from compress.targets import harness

    work.mkdir(parents=True, exist_ok=True)
    inputs, out = work / "inputs.npz", work / "harness.json"
    np.savez(inputs, **arrays)
    ours, bare = [], []
    for _ in range(rounds):
        subprocess.run([sys.executable, harness.__file__, "--model", str(model), "--inputs", str(inputs),
                        "--out", str(out), "--threads", "1", "--warmup", "5", "--min-iterations", str(iterations),
                        "--min-seconds", "0"], check=True, capture_output=True)
        ours.append(json.loads(out.read_text())["latency_ms"]["p50"])
        proc = subprocess.run([sys.executable, "-c", BARE, str(model), str(inputs), str(iterations)], check=True,
                              capture_output=True, text=True)
        bare.append(json.loads(proc.stdout)["p50"])
    return {"model": str(model), "harness_rounds_p50_ms": ours, "bare_rounds_p50_ms": bare,
            **fidelity(ours, bare)}


def timed(fn):
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started
