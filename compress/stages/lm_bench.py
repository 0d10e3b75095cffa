"""Stage bench for task causal-lm: time greedy generation and score teacher-style text, per ONNX variant.

Each measurement runs the device harness (compress/targets/harness.py --generate) on a target: a prompt of
`seq_lens` tokens, then `new_tokens` tokens one at a time through the key/value cache (greedy; `generation` adds
sampled decoding and more token counts, stages/lm_generation.py). A row's latency is
milliseconds per generated token (so the speed-up column compares decoding speed), with the time to first
token (the prefill) and tokens per second beside it. Quality is measured once per variant on held-out
teacher-style text: perplexity, and agreement with the fp32 teacher's greedy next tokens; and on the recipe's
held-out human-written data texts (human_perplexity, human_agreement).
Variants are interleaved round by round (A B A B) by the bench engine (stages/bench_engine.py), as in the
generic bench. There is no PyTorch baseline row: the teacher's fp32 ONNX export is the reference.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from compress.stages import bench_engine as engine
from compress.stages import lm_generation as generation

EVAL_BATCH = 8


def run(cfg, ctx) -> list:
    variants = [v for v in engine.variants(cfg, ctx) if v.runtime != "torch"]
    targets = engine.open_targets(cfg, ctx)
    try:
        envs = {name: t.environment() for name, t in targets.items()}
        unavailable = engine.check_providers(cfg, envs)
        cells = engine.cells(cfg, variants, targets)
        inputs = _Inputs(cfg, ctx)
        budget, work = engine.Budget(cfg.time_budget_s), engine.measure_dir(ctx.work_dir)

        def measure(cell, want_eval, round_):
            return _measure(cfg, cell, inputs, want_eval, work / f"r{round_}", budget, targets[cell.target])

        results, eval_out = engine.interleaved(cfg, ctx, cells, unavailable, budget, measure)
    finally:
        for target in targets.values():
            target.close()
    quality = _quality(variants, inputs, eval_out)
    rows = [_row(c, results[c.id], quality, targets[c.target].emulated) for c in cells]
    engine.check_strict(cfg, rows)
    settings = {**cfg.model_dump(mode="json"), "eval_size": inputs.eval_sequences, "eval_text": inputs.source,
                "human_eval_size": inputs.human_sequences,
                "unit": "ms per generated token"}
    return [engine.save_results(ctx, cells, results, rows, envs, targets, settings)]


class _Inputs:
    """The prompt (token ids) to time and the held-out text to score, as npz files the harness reads."""

    def __init__(self, cfg, ctx):
        from compress.stages import lm_text as text
        from compress.tasks.causal_lm import load_tokenizer

        teacher = ctx.teacher()
        tokenizer = load_tokenizer(teacher.path, ctx.recipe.teacher.trust_remote_code)
        _, eval_pairs, self.source = text.texts(ctx)
        limit = cfg.eval_size or min(ctx.recipe.data.eval_size, 200)
        self.eval_tok = text.tokenize(tokenizer, eval_pairs[:limit], ctx.recipe.data.max_length, self.source)
        self.eval_sequences = len(self.eval_tok.ids)
        self.folder = ctx.work_dir
        stream = [t for ids in self.eval_tok.ids for t in ids] or [tokenizer.eos_token_id or 0]
        self.prompts = {}
        for batch in cfg.batch_sizes:
            for length in cfg.seq_lens:
                ids = (stream * (length // len(stream) + 1))[:length]  # real text, repeated if short
                path = self.folder / f"lm-prompt-b{batch}-s{length}.npz"
                engine.savez(path, {"input_ids": __import__("numpy").asarray([ids] * batch, dtype="int64")})
                self.prompts[(batch, length)] = path
        human = text.human_pairs(ctx)[:limit]
        self.human_tok = text.tokenize(tokenizer, human, ctx.recipe.data.max_length, "data") if human else None
        self.human_sequences = len(self.human_tok.ids) if self.human_tok else 0
        self.eval_path = self.folder / "lm-eval.npz"
        arrays, self.sets, b = {}, {}, 0
        for key, tok in (("teacher", self.eval_tok), ("human", self.human_tok)):
            if tok is None or not tok.ids:
                continue
            order = sorted(range(len(tok.ids)), key=lambda i, t=tok: len(t.ids[i]))
            self.sets[key] = (tok, order, b)  # one npz: the teacher text's batches, then the human text's
            for start in range(0, len(order), EVAL_BATCH):
                batch = text.pad_batch(tok, order[start:start + EVAL_BATCH], tokenizer.pad_token_id)
                arrays[f"b{b}_input_ids"] = batch["input_ids"].numpy()
                arrays[f"b{b}_attention_mask"] = batch["attention_mask"].numpy()
                b += 1
        engine.savez(self.eval_path, arrays)

    def flatten(self, path: Path, key: str = "teacher"):
        """(argmax, nll) of an eval output npz for the text set `key`, per sequence in the original order,
        concatenated."""
        import numpy as np

        tok, order, first = self.sets[key]
        rows: dict[int, tuple] = {}
        with np.load(path) as data:
            for b, start in enumerate(range(0, len(order), EVAL_BATCH), start=first):
                argmax, nll = data[f"b{b}_argmax"], data[f"b{b}_nll"]
                for r, i in enumerate(order[start:start + EVAL_BATCH]):
                    length = len(tok.ids[i])
                    rows[i] = (argmax[r, :length], nll[r, :length])
        ordered = [rows[i] for i in range(len(tok.ids))]
        return np.concatenate([a for a, _ in ordered]), np.concatenate([x for _, x in ordered])


def _measure(cfg, cell, inputs: _Inputs, want_eval: bool, work: Path, budget, target) -> tuple[dict, Path | None]:
    work.mkdir(parents=True, exist_ok=True)
    stem = cell.id.replace("|", "_").replace("@", "at-")
    out, eval_out = work / f"{stem}.json", work / f"{stem}.eval.npz"
    files = {"--inputs": inputs.prompts[(cell.batch_size, cell.seq_len)]}
    if want_eval:
        files["--eval"] = inputs.eval_path
    options = ["--provider", cell.provider, "--threads", str(cell.threads), "--inter-threads", str(cell.inter_threads),
               "--graph-opt", cell.graph_opt, "--execution-mode", cell.execution_mode,
               *generation.harness_options(cfg), "--warmup", str(min(cfg.warmup, 2)),
               "--min-iterations", str(cfg.min_iterations), "--min-seconds", str(cfg.min_seconds)]
    options += ["--provider-options", cell.options] if cell.options else []
    left = budget.left()
    timeout = engine.JOB_TIMEOUT_S if left is None else max(0.1, min(engine.JOB_TIMEOUT_S, left))
    try:
        proc = target.run_harness(cell.variant.folder, files, options, out, eval_out if want_eval else None, timeout)
    except subprocess.TimeoutExpired:
        return {"status": "skipped" if timeout < engine.JOB_TIMEOUT_S else "error",
                "reason": f"stopped after {timeout:.0f} s"}, None
    if not out.is_file():
        return {"status": "error", "reason": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}, None
    return json.loads(out.read_text()), eval_out if want_eval else None


def _quality(variants, inputs: _Inputs, eval_out: dict) -> dict:
    """Perplexity and agreement on held-out teacher text; on the data's human text too (human_perplexity,
    human_agreement: with the fp32 teacher's greedy next token there)."""
    from compress.stages.lm_text import scored_mask
    from compress.tasks.causal_lm import score

    reference_variant = next((v.name for v in variants if v.role == "teacher" and v.precision == "fp32"), None)
    out: dict = {key: {} for key in eval_out}
    for name, (tok, _, _) in inputs.sets.items():
        mask = scored_mask(tok)
        stats = {key: inputs.flatten(path, name) for key, path in eval_out.items()}
        reference = next((stats[k][0] for k in stats if k[0] == reference_variant), None)
        prefix = "" if name == "teacher" else f"{name}_"
        for key, (argmax, nll) in stats.items():
            scores = score(argmax, nll, mask, reference) | ({} if reference is not None else {"agreement": None})
            if prefix:
                scores = {f"{prefix}{k}": v for k, v in scores.items() if k in ("perplexity", "agreement")}
            out[key].update(scores)
    return out


def _row(cell, results: list[dict], quality: dict, emulated: bool) -> dict:
    row = engine.row(cell, results, quality, emulated)
    from compress.tasks.common import read_json

    settings = read_json(cell.variant.folder / "compress.json").get("settings")  # int4: algorithm, block...
    row.update({"settings": settings} if settings else {})
    row["new_tokens"] = next((r.get("new_tokens") for r in results if r.get("status") == "ok"), None)
    ok = [r for r in results if r.get("status") == "ok"]
    if ok:
        from compress.targets.harness import summarize

        row["runtime"] = ok[0].get("runtime", row["runtime"])  # onnxruntime-genai for a genai-format bundle

        ttft = summarize([s for r in ok for s in r["ttft_samples_ms"]], 1)["latency_ms"]
        ttft["rounds_p50"] = [r["ttft_ms"]["p50"] for r in ok]
        row["ttft_ms"] = ttft
        row["tokens_per_s"] = 1000.0 * cell.batch_size / row["latency_ms"]["p50"]
        row["unit"] = "ms per generated token"
        row["decoding"] = ok[0].get("decoding", "greedy")
        row["generation"] = generation.modes(ok)
    return row
