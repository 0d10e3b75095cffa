"""Stage generate: the teacher writes completions for a prompt set; the output is a dataset artifact.

Sequence-level distillation (the distill stage of task causal-lm) trains the student on this text. The
prompts are the recipe's data texts (train split), put in `prompt_template` and the tokenizer's chat template.
Generation runs in batches of prompts of similar length; each finished batch is appended to a progress file
in the work dir, so an interrupted run resumes where it stopped and, batch seeds being fixed, writes what an
uninterrupted run would have written. The artifact is a folder:

    data.jsonl       {"id", "split": "train" | "eval", "prompt", "prompt_text", "completion", "finish"
                      (+ with top_k "completion_ids": the generated ids, the end token included)}
    topk.npz         with top_k: the teacher's top-k next-token log-probabilities per generated token (lm_topk.py)
    provenance.json  teacher (name, source, sha256, licence), settings, counts, time, versions
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.errors import StageError
from compress.schema_base import StageBase
from compress.stages import lm_topk

PROGRESS = "progress.jsonl"


class Config(StageBase):
    consumes = ("hf-model",)
    produces = ("dataset",)

    kind: Literal["generate"] = "generate"
    model: str | None = Field(default=None, description="The hf-model artifact that writes (default: the teacher).")
    count: int = Field(default=2000, ge=1, description="Completions to write (at most one per training text).")
    eval_size: int = Field(default=200, ge=1, description="Completions held out of training: the teacher-style "
                           "text that perplexity and teacher agreement are measured on.")
    prompt_template: str = Field(default="{text}", description="The user message; {text} is a data text.")
    system: str | None = Field(default=None, description="System message (default: the chat template's own).")
    chat_template: bool = Field(default=True, description="Wrap prompts in the tokenizer's chat template when it "
                                "has one.")
    max_prompt_tokens: int = Field(default=96, ge=4, description="Prompts longer than this (after templating) "
                                   "are skipped, not truncated.")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Tokens per completion, at most.")
    do_sample: bool = Field(default=True, description="Sample (with temperature and top_p); false: greedy.")
    temperature: float = Field(default=0.7, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=0.9, gt=0, le=1, description="Nucleus sampling: keep this much probability mass.")
    batch_size: int = Field(default=16, ge=1, description="Prompts per generate call.")
    seed: int = Field(default=0, description="Seed of the prompt order and of each batch's sampling.")
    processes: int | None = Field(default=None, ge=1, le=64, description="Processes that generate at once, each "
                                  "with its share of the CPU threads and its own copy of the model (torch scales "
                                  "poorly across threads: on 2 cores two 1-thread processes wrote the SmolLM2 "
                                  "recipe's 1,024 completions in 0.75x the time of one 2-thread process, the same "
                                  "text). Default: 2 where there are 2 or "
                                  "more cores, 4 or more batches to write, a model of 50 MB or more and the memory for "
                                  "two copies; else 1.")
    top_k: int = Field(default=0, ge=0, le=256, description="Also keep the teacher's top-k next-token "
                       "log-probabilities of every generated token (topk.npz, stages/lm_topk.py): the targets of "
                       "token-level distillation (distill loss token-kl) without running the teacher again. 0: none.")


def run(cfg: Config, ctx) -> list:
    from compress.tasks.causal_lm import load_tokenizer

    source = _model(cfg, ctx)
    if ctx.recipe.task != "causal-lm":
        raise StageError(f"stage {ctx.stage_name}: generate needs task causal-lm (this recipe: {ctx.recipe.task})")
    tokenizer = load_tokenizer(source.path, ctx.recipe.teacher.trust_remote_code)
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    prompts = _prompts(cfg, ctx, tokenizer)
    batches = _batches(prompts, cfg)
    progress = ctx.work_dir / f"{PROGRESS}.{_key(cfg, ctx, source)[:16]}"
    done = read_progress(progress)
    todo = [b for b in batches if b[0] not in done]
    started = time.monotonic()
    if todo:
        from compress.stages import lm_pool
        from compress.training import progress_bar

        processes = min(cfg.processes or lm_pool.auto_processes(source.path, len(todo)), len(todo))
        ctx.console.print(f"  {source.name} writes {len(prompts)} completions ({len(done)} batches already done"
                          f"{f'; {processes} processes' if processes > 1 else ''})")
        with progress_bar(ctx, "generate", len(todo), unit="batch") as tick:
            if processes > 1:
                lm_pool.generate(cfg, ctx, source, todo, progress, processes, tick)
            else:
                _generate_here(cfg, ctx, source, tokenizer, todo, progress, tick)
        done = read_progress(progress)
    rows = sorted((r for records in done.values() for r in records), key=lambda r: r["id"])
    rows = [r for r in rows if r["id"] in {p["id"] for p in prompts}]
    eval_ids = set(sorted(r["id"] for r in rows)[: min(cfg.eval_size, max(0, len(rows) - 1))])
    for row in rows:
        row["split"] = "eval" if row["id"] in eval_ids else "train"
    provenance = _provenance(cfg, ctx, source, rows, time.monotonic() - started)
    ctx.metrics.update({k: provenance[k] for k in ("completions", "train", "eval", "finished_by_eos",
                                                   "mean_completion_tokens", "seconds")})
    artifact = ctx.save("generated", "dataset", lambda tmp: _write(tmp, rows, provenance),
                        {"teacher": source.name, "completions": len(rows), "license": provenance["teacher"]["license"]})
    for path in progress_files(progress):  # the artifact holds it all now
        path.unlink(missing_ok=True)
    return [artifact]


def _generate_here(cfg: Config, ctx, source, tokenizer, todo: list, progress: Path, tick) -> None:
    """The batches `todo`, in this process, each appended to `progress` as it ends."""
    from compress.tasks.causal_lm import load_backbone

    model = load_backbone(source.path, ctx.recipe.teacher.trust_remote_code).eval()
    with open(progress, "a", encoding="utf-8") as out:
        for index, rows in todo:
            append_batch(out, index, generate_batch(model, tokenizer, rows, cfg, index))
            tick()


def generate_batch(model, tokenizer, rows: list[dict], cfg: Config, index: int) -> list[dict]:
    """One batch's records, its sampling seeded by its number: a resumed run (or another process) writes the same."""
    import torch

    torch.manual_seed(cfg.seed * 100_003 + index)
    return _generate(model, tokenizer, rows, cfg)


def append_batch(out, index: int, records: list[dict]) -> None:
    """A finished batch, one line, on disk before the next starts (a kill loses at most the batch under way)."""
    out.write(json.dumps({"batch": index, "rows": records}) + "\n")
    out.flush()
    os.fsync(out.fileno())


def _model(cfg: Config, ctx):
    if cfg.model:
        return ctx.of_format("hf-model", [cfg.model])[0]
    teacher = ctx.teacher(required=False)
    if teacher is None:
        raise StageError(f"stage {ctx.stage_name}: no teacher to generate with")
    return teacher


def _prompts(cfg: Config, ctx, tokenizer) -> list[dict]:
    """Up to `count` prompts from the training texts, in a seeded order; too-long prompts are skipped."""
    import numpy as np

    from compress.data import load_dataset
    from compress.tasks.causal_lm import chat_prompt

    texts = load_dataset(ctx.recipe.data).train.texts
    order = np.random.default_rng(cfg.seed).permutation(len(texts)).tolist()
    prompts, skipped = [], 0
    for i in order:
        text = chat_prompt(tokenizer, texts[i], cfg.prompt_template, cfg.system, cfg.chat_template)
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length > cfg.max_prompt_tokens:
            skipped += 1
            continue
        prompts.append({"id": len(prompts), "prompt": texts[i], "prompt_text": text, "length": length})
        if len(prompts) == cfg.count:
            break
    ctx.metrics["prompts_skipped_too_long"] = skipped
    if len(prompts) < 2:
        raise StageError(f"stage {ctx.stage_name}: {len(prompts)} usable prompts ({skipped} longer than "
                         f"max_prompt_tokens {cfg.max_prompt_tokens}); need at least 2")
    return prompts


def _batches(prompts: list[dict], cfg: Config) -> list[tuple[int, list[dict]]]:
    """Batches of similar prompt length (little padding), numbered: the number seeds the batch's sampling."""
    ordered = sorted(prompts, key=lambda p: (p["length"], p["id"]))
    return [(i, ordered[s:s + cfg.batch_size]) for i, s in enumerate(range(0, len(ordered), cfg.batch_size))]


def _generate(model, tokenizer, rows: list[dict], cfg: Config) -> list[dict]:
    from compress.stages import lm_decode

    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    if lm_decode.plain_config(model.generation_config):
        prompts = [tokenizer(r["prompt_text"], add_special_tokens=False)["input_ids"] for r in rows]
        sampling = {"temperature": cfg.temperature, "top_k": model.generation_config.top_k,
                    "top_p": cfg.top_p} if cfg.do_sample else None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        new, topk = lm_decode.generate(model, prompts, cfg.max_new_tokens, eos_ids, pad, sampling, cfg.top_k)
    else:
        new, topk = _hf_generate(model, tokenizer, rows, cfg, eos)
    records = []
    for r, (row, tokens) in enumerate(zip(rows, new)):
        cut = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
        kept = tokens if cut is None else tokens[:cut]
        records.append({"id": row["id"], "prompt": row["prompt"], "prompt_text": row["prompt_text"],
                        "completion": tokenizer.decode(kept, skip_special_tokens=True),
                        "finish": "length" if cut is None else "eos", "tokens": len(kept)})
        if topk is not None:  # the steps that chose the kept tokens, and the end token when there is one
            steps = len(kept) + (cut is not None)
            records[-1].update(completion_ids=tokens[:steps], **lm_topk.row_record(topk[0][r], topk[1][r], steps))
    return records


def _hf_generate(model, tokenizer, rows: list[dict], cfg: Config, eos) -> tuple[list[list[int]], list | None]:
    """transformers' generate, for models whose generation config asks for more than lm_decode does."""
    import torch

    encoded = tokenizer([r["prompt_text"] for r in rows], return_tensors="pt", padding=True,
                        add_special_tokens=False, return_token_type_ids=False)
    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    with torch.inference_mode():
        out = model.generate(**encoded, max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=eos, output_logits=bool(cfg.top_k), return_dict_in_generate=True,
                             **sampling)
        topk = lm_topk.capture(out.logits, cfg.top_k) if cfg.top_k else None
    return out.sequences[:, encoded["input_ids"].shape[1]:].tolist(), topk


def progress_files(progress: Path) -> list[Path]:
    """The progress file and those of generate's worker processes (`<progress>.w<k>`)."""
    return [progress, *sorted(progress.parent.glob(f"{progress.name}.w*"))]


def read_progress(progress: Path) -> dict[int, list[dict]]:
    """Finished batches, from every progress file; a line cut short by a kill is ignored (that batch runs again)."""
    done: dict[int, list[dict]] = {}
    for path in progress_files(progress):
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            done[int(entry["batch"])] = entry["rows"]
    return done


def _key(cfg: Config, ctx, source) -> str:
    payload = {"cfg": cfg.model_dump(mode="json", exclude={"name", "eval_size", "processes"}), "model": source.sha256,
               "data": ctx.recipe.data.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _provenance(cfg: Config, ctx, source, rows: list[dict], seconds: float) -> dict:
    import transformers

    tokens = [r["tokens"] for r in rows]
    return {
        "teacher": {"artifact": source.name, "source": source.metadata.get("source") or ctx.recipe.teacher.source,
                    "sha256": source.sha256,
                    "license": source.metadata.get("license") or _card_license(source.path)},
        "settings": cfg.model_dump(mode="json"), "data": ctx.recipe.data.model_dump(mode="json"),
        "completions": len(rows), "train": sum(r["split"] == "train" for r in rows),
        "eval": sum(r["split"] == "eval" for r in rows),
        "finished_by_eos": sum(r["finish"] == "eos" for r in rows),
        "mean_completion_tokens": round(sum(tokens) / max(len(tokens), 1), 1),
        "seconds": round(seconds, 1), "transformers": transformers.__version__,
    }


def _card_license(path: Path) -> str | None:
    from compress.licenses import read_from_model_card

    return read_from_model_card(path)


def _write(tmp: Path, rows: list[dict], provenance: dict) -> None:
    tmp.mkdir()
    provenance["topk"] = lm_topk.write(tmp, rows)
    with open(tmp / "data.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def read_generated(path: Path) -> dict[str, list[dict]]:
    """The rows of a generated dataset artifact by split."""
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    with open(Path(path) / "data.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            out.setdefault(row.get("split", "train"), []).append(row)
    return out
