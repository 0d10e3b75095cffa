"""Stage distill: train a smaller student to copy the teacher (the latest hf-model with role "teacher").

The student is built from the recipe (teacher layers, a config, or any model), trained on the recipe's
training texts against the teacher's outputs, evaluated on the held-out split with the task metric, and
saved as a complete Hugging Face folder (artifact `student`). The teacher's outputs are computed once and
cached in the work dir: on 2 cores they cost more than an epoch of training (shared/onnx-notes.md).
Feature losses (hidden-mse, attention) need the teacher's internals, so the teacher then runs in the loop.
The training loop (`train`) is shared with the finetune stage; it runs under DDP when launched with
`compress run --nproc N` (compress/distributed.py) and resumes from its last checkpoint after an interruption.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from compress.errors import StageError
from compress.schema_base import StageBase, StrictModel

Loss = Literal["cosine", "mse", "logit-kd", "hidden-mse", "attention"]
OUTPUT_LOSSES = ("cosine", "mse", "logit-kd")
_LAYER = re.compile(r"^(.*?\b(?:layer|layers|h|block))\.(\d+)\.(.*)$")
# Fields that only say how long to train: changing them keeps the checkpoint usable (resume, then go on).
_LENGTH_FIELDS = {"name", "epochs", "max_steps", "max_minutes", "eval_every", "checkpoint_every"}


class TrainingConfig(StageBase):
    """Training-loop settings shared by distill and finetune."""

    epochs: float = Field(default=1, gt=0, description="Passes over the training texts (max_steps wins).")
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps to train; overrides epochs.")
    max_minutes: float | None = Field(
        default=None, gt=0, description="Time budget of the training loop; the LR schedule follows whichever "
        "of steps or time runs out first, so a short budget still ends at a low learning rate.")
    batch_size: int = Field(default=32, ge=1, description="Texts per batch (per process under --nproc).")
    grad_accum: int = Field(default=1, ge=1, description="Batches accumulated per optimizer step.")
    lr: float = Field(default=1e-4, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    warmup: float = Field(default=0.05, ge=0, lt=1, description="Share of training spent warming the LR up.")
    schedule: Literal["linear", "cosine", "constant"] = Field(default="linear", description="LR decay after warm-up.")
    seed: int = Field(default=0, description="Seed of initialisation, data order and dropout.")
    max_length: int | None = Field(default=None, ge=8, description="Tokens per text (default: data.max_length).")
    eval_every: int = Field(default=200, ge=0, description="Evaluate every N steps (0: only at the end).")
    checkpoint_every: int = Field(default=200, ge=0, description="Checkpoint every N steps for resumption (0: off).")


class FromTeacher(StrictModel):
    layers: list[int] = Field(min_length=1, description="Teacher layers to copy into the student, in order.")


class StudentSpec(StrictModel):
    from_teacher: FromTeacher | None = Field(default=None, description="Copy embeddings, these layers and the head (DistilBERT-style).")
    config: dict | None = Field(default=None, description="Overrides of the teacher's config; random init.")
    source: str | None = Field(default=None, description="Any model: local path, package:..., or hub id.")

    @model_validator(mode="after")
    def _exactly_one(self) -> StudentSpec:
        given = [k for k in ("from_teacher", "config", "source") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of from_teacher, config, source (got {given or 'none'})")
        return self


class Config(TrainingConfig):
    consumes = ("hf-model",)
    produces = ("hf-model",)
    distributed: ClassVar[bool] = True  # the runner may launch it under torchrun

    kind: Literal["distill"] = "distill"
    lr: float = Field(default=3e-4, gt=0, description="Peak learning rate of AdamW (3e-4: MiniLM {0,2,5} reached "
                      "cosine 0.90 in 5 minutes on 2 CPU cores).")
    student: StudentSpec = Field(description="How the student is made.")
    loss: Loss | None = Field(default=None, description="One loss (default: the task's: cosine or logit-kd).")
    losses: dict[Loss, float] | None = Field(
        default=None, description="Several losses with weights, e.g. {cosine: 1.0, hidden-mse: 0.5}.")
    freeze_embeddings: bool | None = Field(
        default=None, description="Keep the word embeddings fixed (default: yes when copied from the teacher); "
        "they are most of a small student's weights, so steps get cheaper on CPU.")
    temperature: float = Field(default=2.0, gt=0, description="logit-kd: softmax temperature.")
    alpha: float = Field(default=0.5, ge=0, le=1, description="logit-kd: weight of the hard-label loss when labels exist.")

    @model_validator(mode="after")
    def _one_loss_field(self) -> Config:
        if self.loss and self.losses:
            raise ValueError("give either loss or losses, not both")
        return self


def run(cfg: Config, ctx) -> list:
    import torch

    from compress import distributed as D
    from compress.data import load_dataset
    from compress.tasks.common import load_tokenizer

    task, trust = ctx.task, ctx.recipe.teacher.trust_remote_code
    teacher = teacher_artifact(ctx)
    losses = dict(cfg.losses or {cfg.loss or task.DEFAULT_LOSS: 1.0})
    if "logit-kd" in losses and task.OUTPUT_NAME != "logits":
        raise StageError(f"loss logit-kd needs a task with logits; task {task.NAME} outputs {task.OUTPUT_NAME}")
    data, max_length = load_dataset(ctx.recipe.data), cfg.max_length or ctx.recipe.data.max_length
    teacher_net = task.load_backbone(teacher.path, trust).to(D.device()).eval()
    if "attention" in losses:  # fused (sdpa) attention returns no attention maps; students copy this config
        teacher_net = eager(teacher_net)
    torch.manual_seed(cfg.seed)
    student_net, student_dir, pairs = build_student(cfg.student, task, teacher.path, teacher_net, trust)
    if "attention" in losses:
        student_net = eager(student_net)
    if cfg.freeze_embeddings if cfg.freeze_embeddings is not None else bool(cfg.student.from_teacher):
        student_net.get_input_embeddings().weight.requires_grad_(False)
    widths = (student_net.config.hidden_size, teacher_net.config.hidden_size)
    if task.OUTPUT_NAME != "logits" and widths[0] != widths[1] and set(losses) & set(OUTPUT_LOSSES):
        raise StageError(f"the student's width {widths[0]} differs from the teacher's {widths[1]}: {task.OUTPUT_NAME} "
                         "losses compare outputs directly; keep hidden_size, or train with hidden-mse alone")
    tokenizer = load_tokenizer(student_dir)
    started = time.monotonic()
    targets, cached = cached_teacher_outputs(ctx, task, teacher, teacher_net, data, max_length)
    ctx.metrics.update(teacher_params=param_count(teacher_net), student_params=param_count(student_net),
                       precompute_seconds=round(time.monotonic() - started, 2), targets_cached=cached,
                       losses=losses)
    online = any(name not in OUTPUT_LOSSES for name in losses)
    if not online:
        del teacher_net  # its cached outputs are all we need now
    module = _Distiller(task, student_net, student_dir, teacher_net if online else None, losses, pairs, cfg)
    ids = tokenizer(data.train.texts, truncation=True, max_length=max_length)["input_ids"]
    train_targets = torch.from_numpy(targets["train"]) if "train" in targets else None

    def collate(index: list[int]) -> dict:
        batch = pad(ids, index, tokenizer.pad_token_id)
        if train_targets is not None:
            batch["target"] = train_targets[index]
        if data.train.labels is not None:
            batch["labels"] = torch.tensor([data.train.labels[i] for i in index])
        return batch

    job = Job(module=module, student=module.student, lengths=[len(x) for x in ids], collate=collate,
              evaluate=lambda: evaluate_outputs(task, module.student, tokenizer, data.eval, max_length,
                                                targets["eval"]),
              headline=task.HEADLINE, key=_checkpoint_key(cfg, teacher, ctx.recipe.data))
    result = train(cfg, ctx, job)
    ctx.metrics.update(result)
    if not ctx.is_main_process:
        return []
    module.features(False)
    meta = {"role": "student", "params": ctx.metrics["student_params"], "teacher": teacher.name,
            "quality": ctx.metrics["quality_after"]}
    return [ctx.save("student", "hf-model", lambda tmp: save_model(student_net, student_dir, tmp), meta)]


def teacher_artifact(ctx):
    teachers = [a for a in ctx.of_format("hf-model") if a.metadata.get("role") == "teacher"]
    if not teachers:
        raise StageError(f"stage {ctx.stage_name}: no hf-model artifact with role 'teacher'")
    return teachers[-1]  # teacher-finetuned, when a finetune stage ran, comes after teacher


def save_model(backbone, source_dir: Path, tmp: Path) -> None:
    """A complete HF folder: tokenizer and sentence-transformers files from `source_dir`, then the weights
    and config (written last, so the model's own config.json wins over the copied one)."""
    from compress.tasks.common import copy_bundle_files

    tmp.mkdir()
    copy_bundle_files(source_dir, tmp)
    backbone.save_pretrained(tmp)


# ---------------------------------------------------------------- the student


def build_student(spec: StudentSpec, task, teacher_dir: Path, teacher, trust: bool):
    """(backbone, folder its tokenizer/pooling files come from, [(student, teacher) hidden-state index pairs])."""
    try:
        if spec.from_teacher:
            layers, count = spec.from_teacher.layers, teacher.config.num_hidden_layers
            if any(not 0 <= n < count for n in layers):
                raise StageError(f"student.from_teacher.layers {layers}: the teacher has layers 0..{count - 1}")
            config = copy.deepcopy(teacher.config)
            config.num_hidden_layers = len(layers)
            student = type(teacher)(config)
            student.load_state_dict(_select_layers(teacher.state_dict(), layers))
            return student, teacher_dir, [(0, 0)] + [(i + 1, n + 1) for i, n in enumerate(layers)]
        if spec.config is not None:
            config = copy.deepcopy(teacher.config)
            unknown = [k for k in spec.config if not hasattr(config, k)]
            if unknown:
                raise StageError(f"student.config: {unknown[0]!r} is not a field of the teacher's config")
            for key, value in spec.config.items():
                setattr(config, key, value)
            student = type(teacher)(config)
            return student, teacher_dir, _uniform_pairs(config.num_hidden_layers, teacher.config.num_hidden_layers)
        from compress.sources import resolve_model

        path = resolve_model(spec.source)
        heads = {"id2label": teacher.config.id2label, "label2id": teacher.config.label2id}
        student = task.load_backbone(path, trust, **(heads if task.OUTPUT_NAME == "logits" else {}))
        return student, path, _uniform_pairs(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    except (ValueError, RuntimeError) as exc:
        raise StageError(f"cannot build the student: {exc}") from None


def eager(net):
    """The same model with eager attention (which can return attention maps); BERT fixes it at construction."""
    if net.config._attn_implementation == "eager":
        return net
    config = copy.deepcopy(net.config)
    config._attn_implementation = "eager"
    copy_ = type(net)(config).to(next(net.parameters()).device).train(net.training)
    copy_.load_state_dict(net.state_dict())
    return copy_


def _select_layers(state: dict, layers: list[int]) -> dict:
    """Teacher weights renumbered for the student: teacher layer layers[i] becomes student layer i."""
    out = {}
    for key, value in state.items():
        match = _LAYER.match(key)
        if not match:
            out[key] = value.clone()
            continue
        for position, source in enumerate(layers):
            if int(match.group(2)) == source:
                out[f"{match.group(1)}.{position}.{match.group(3)}"] = value.clone()
    return out


def _uniform_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    return [(0, 0)] + [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def _Distiller(task, student_net, student_dir, teacher_net, losses, pairs, cfg):
    """The module DDP trains: the task-wrapped student, hidden-state projections, and the losses."""
    import torch
    import torch.nn.functional as F

    class Distiller(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = task.wrap(student_net, student_dir)
            # Plain attributes, not submodules: the teacher must stay out of the optimizer and checkpoints.
            object.__setattr__(self, "nets", (student_net, teacher_net))
            self.losses, self.pairs = losses, pairs
            self.captured: dict = {}
            student_net.register_forward_hook(lambda _m, _i, out: self.captured.__setitem__("out", out))
            ds, dt = student_net.config.hidden_size, (teacher_net.config.hidden_size if teacher_net else 0)
            # A learned projection maps student widths onto the teacher's when they differ.
            self.proj = torch.nn.ModuleList(
                torch.nn.Linear(ds, dt) if ds != dt else torch.nn.Identity()
                for _ in (pairs if "hidden-mse" in losses else []))
            self.features(True)

        def features(self, on: bool) -> None:
            """Ask the backbones for hidden states / attention maps only when a loss needs them."""
            for net in self.nets:
                if net is None:
                    continue
                net.config.output_hidden_states = on and "hidden-mse" in self.losses
                net.config.output_attentions = on and "attention" in self.losses

        def forward(self, input_ids, attention_mask, target=None, labels=None):
            out = self.student(input_ids, attention_mask)
            total = 0.0
            for name, weight in self.losses.items():
                total = total + weight * self._loss(name, out, target, labels, input_ids, attention_mask)
            return total

        def _loss(self, name, out, target, labels, input_ids, attention_mask):
            if name == "cosine":
                return 1 - F.cosine_similarity(out, target, dim=-1).mean()
            if name == "mse":  # summed over features: on unit vectors a per-element mean is too small to learn
                return ((out - target) ** 2).sum(-1).mean()
            if name == "logit-kd":
                t = cfg.temperature
                soft = F.kl_div(F.log_softmax(out / t, -1), F.softmax(target / t, -1), reduction="batchmean") * t * t
                if labels is None or cfg.alpha == 0:
                    return soft
                return (1 - cfg.alpha) * soft + cfg.alpha * F.cross_entropy(out, labels)
            with torch.no_grad():
                ref = self.nets[1](input_ids=input_ids, attention_mask=attention_mask)
            mine, mask = self.captured["out"], attention_mask.unsqueeze(-1).to(out.dtype)
            if name == "hidden-mse":
                parts = [((p(mine.hidden_states[s]) - ref.hidden_states[t]) ** 2 * mask).sum()
                         / (mask.sum() * ref.hidden_states[t].shape[-1])
                         for (s, t), p in zip(self.pairs, self.proj)]
                return sum(parts) / len(parts)
            parts = [_attention_kl(mine.attentions[s - 1], ref.attentions[t - 1], mask) for s, t in self.pairs if s]
            return sum(parts) / len(parts)

    return Distiller()


def _attention_kl(student, teacher, mask):
    """KL(teacher || student) of attention rows of real (not padding) query tokens, averaged over heads."""
    if student.shape[1] != teacher.shape[1]:  # different head counts: compare the heads' average
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    kl = (teacher * (teacher.clamp_min(1e-9).log() - student.clamp_min(1e-9).log())).sum(-1)
    query = mask.squeeze(-1).unsqueeze(1)
    return (kl * query).sum() / (query.sum() * kl.shape[1])


# ---------------------------------------------------------------- teacher outputs, cached


def cached_teacher_outputs(ctx, task, teacher, net, data, max_length: int) -> tuple[dict, bool]:
    """The teacher's outputs on the train and eval texts, from the work dir when computed before."""
    import numpy as np

    from compress import distributed as D
    from compress.tasks.common import load_tokenizer

    key = hashlib.sha256(json.dumps({"teacher": teacher.sha256, "task": task.NAME, "max_length": max_length,
                                     "data": ctx.recipe.data.model_dump(mode="json")}, sort_keys=True).encode())
    path = ctx.work_dir / f"targets-{key.hexdigest()[:16]}.npz"
    if D.broadcast_object(path.is_file()):
        with np.load(path) as saved:
            return {k: saved[k] for k in saved.files}, True
    model, tokenizer = task.wrap(net, teacher.path), load_tokenizer(teacher.path)
    out = {split: teacher_outputs(model, tokenizer, texts, max_length, ctx)
           for split, texts in (("train", data.train.texts), ("eval", data.eval.texts))}
    if ctx.is_main_process:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, **out)
        os.replace(tmp, path)
    return out, False


def teacher_outputs(model, tokenizer, texts: list[str], max_length: int, ctx, batch_size: int = 64):
    """Outputs for `texts` in their order; batches sorted by length (little padding), split over ranks."""
    import numpy as np
    import torch

    from compress import distributed as D
    from compress.tasks.common import batches

    rank, world = D.rank_world()
    todo = batches(tokenizer, texts, max_length, batch_size)
    mine, outs = todo[rank::world], []
    with torch.inference_mode(), _progress(ctx, f"teacher outputs ({len(texts)} texts)", len(mine)) as tick:
        for batch in mine:
            args = (torch.from_numpy(batch[k]).to(D.device()) for k in ("input_ids", "attention_mask"))
            outs.append((batch["_index"], model(*args).float().cpu().numpy()))
            tick()
    pieces = [p for part in D.gather_objects(outs) for p in part]
    result = np.empty((len(texts), pieces[0][1].shape[1]), dtype=np.float32)
    for index, values in pieces:
        result[index] = values
    return result


def evaluate_outputs(task, model, tokenizer, split, max_length: int, reference) -> dict:
    """The task metric of `model` on a held-out split against the reference outputs."""
    import torch

    from compress import distributed as D
    from compress.tasks.common import batches, unbatch

    todo = batches(tokenizer, split.texts, max_length, 64)
    was_training, outs = model.training, []
    model.eval()
    with torch.inference_mode():
        for batch in todo:
            args = (torch.from_numpy(batch[k]).to(D.device()) for k in ("input_ids", "attention_mask"))
            outs.append(model(*args).float().cpu().numpy())
    model.train(was_training)
    return task.quality(reference, unbatch(outs, todo), split.labels)


def pad(ids: list[list[int]], index: list[int], pad_id: int) -> dict:
    import torch

    rows = [ids[i] for i in index]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _checkpoint_key(cfg, teacher, data_cfg) -> str:
    from compress import distributed as D

    payload = {"cfg": cfg.model_dump(mode="json", exclude=_LENGTH_FIELDS), "teacher": teacher.sha256,
               "data": data_cfg.model_dump(mode="json"), "world": D.rank_world()[1]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- the training loop


@dataclass
class Job:
    module: object  # torch module: forward(**batch) -> scalar loss
    student: object  # the part that is evaluated and kept (its state_dict is the "best" checkpoint)
    lengths: list[int]  # tokens per training example, for length-bucketed batches
    collate: Callable[[list[int]], dict]
    evaluate: Callable[[], dict]  # quality on held-out data; called on the main process only
    headline: str  # the quality key that picks the best checkpoint
    key: str  # identifies a compatible checkpoint


def train(cfg: TrainingConfig, ctx, job: Job) -> dict:
    """AdamW with warm-up and decay, gradient accumulation, periodic eval keeping the best weights,
    checkpoints for resumption; DDP when distributed. Returns the metrics of the run."""
    import torch
    from torch.utils.data import DistributedSampler

    from compress import distributed as D

    rank, world = D.rank_world()
    job.module.to(D.device()).train()
    optimizer = torch.optim.AdamW([p for p in job.module.parameters() if p.requires_grad],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt, best_path = ctx.work_dir / "checkpoint.pt", ctx.work_dir / "best.pt"
    state = _resume(ckpt, job, optimizer)
    if state is None:
        torch.manual_seed(cfg.seed + rank)
        state = {"step": 0, "epoch": 0, "chunk": 0, "elapsed": 0.0, "train_seconds": 0.0, "samples": 0,
                 "best": None, "evals": [], "quality_before": job.evaluate() if ctx.is_main_process else None}
    resumed_from, model = state["step"], D.wrap_ddp(job.module)
    per_epoch = len(_buckets(job.lengths, cfg.batch_size, cfg.seed)) // world // cfg.grad_accum
    if per_epoch == 0:
        raise StageError(f"stage {ctx.stage_name}: {len(job.lengths)} training texts do not fill one step of "
                         f"batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {world} process(es)")
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    progress = max(state["step"] / total, state["elapsed"] / budget)
    clock, base_elapsed, loss_avg = time.monotonic(), state["elapsed"], None
    with _progress(ctx, f"{ctx.stage_name}: training", None) as tick:
        while progress < 1:
            buckets = _buckets(job.lengths, cfg.batch_size, cfg.seed + state["epoch"])
            sampler = DistributedSampler(range(len(buckets)), num_replicas=world, rank=rank, seed=cfg.seed)
            sampler.set_epoch(state["epoch"])
            order = [buckets[i] for i in sampler]
            chunks = [order[i:i + cfg.grad_accum] for i in range(0, len(order) - cfg.grad_accum + 1, cfg.grad_accum)]
            for k in range(state["chunk"], len(chunks)):
                started = time.monotonic()
                loss = _step(model, optimizer, chunks[k], job.collate, cfg.lr * _lr_factor(cfg, progress))
                state["train_seconds"] += time.monotonic() - started
                state["samples"] += sum(len(b) for b in chunks[k]) * world
                state["step"], state["chunk"] = state["step"] + 1, k + 1
                loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss
                state["elapsed"] = base_elapsed + time.monotonic() - clock
                progress = D.all_max(max(state["step"] / total, state["elapsed"] / budget))
                if ctx.is_main_process and (progress >= 1 or (cfg.eval_every and state["step"] % cfg.eval_every == 0)):
                    _evaluate(job, state, best_path, ctx)
                if ctx.is_main_process and (progress >= 1 or (cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0)):
                    _save_checkpoint(ckpt, job, optimizer, state)
                tick(progress, f"step {state['step']} loss {loss_avg:.4f} "
                     f"{state['samples'] / max(state['train_seconds'], 1e-9):.0f} samples/s")
                if progress >= 1:
                    break
            else:
                state["epoch"], state["chunk"] = state["epoch"] + 1, 0
    hashes = D.gather_objects(_weights_hash(job.student))
    if len(set(hashes)) > 1:
        raise StageError(f"stage {ctx.stage_name}: the ranks ended with different weights ({hashes})")
    if ctx.is_main_process and state["best"] is None:
        _evaluate(job, state, best_path, ctx)
    if ctx.is_main_process:
        job.student.load_state_dict(torch.load(best_path, weights_only=True))
    return {"quality_before": state["quality_before"], "quality_after": state["best"], "evals": state["evals"],
            "steps": state["step"], "resumed_from_step": resumed_from, "seconds": round(state["elapsed"], 2),
            "train_seconds": round(state["train_seconds"], 2), "world_size": world, "final_loss": loss_avg,
            "samples_per_s": round(state["samples"] / max(state["train_seconds"], 1e-9), 1),
            "rank_weight_hashes": hashes}


def _step(model, optimizer, chunk: list[list[int]], collate, lr: float) -> float:
    import torch

    from compress import distributed as D

    for group in optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for j, index in enumerate(chunk):
        batch = {k: v.to(D.device()) for k, v in collate(index).items()}
        # Under DDP, gradients are averaged over processes only on the last batch of an accumulation.
        last = j == len(chunk) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if last else model.no_sync():
            loss = model(**batch) / len(chunk)
            loss.backward()
        total += float(loss.item())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _lr_factor(cfg: TrainingConfig, progress: float) -> float:
    if progress < cfg.warmup:
        return (progress + 1e-3) / cfg.warmup
    rest = min(1.0, (progress - cfg.warmup) / (1 - cfg.warmup))
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    return 1 - rest


def _buckets(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (sorted inside windows of 50 batches of a seeded shuffle): less padding."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    out, window = [], batch_size * 50
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda i: lengths[i])
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return out


def _evaluate(job: Job, state: dict, best_path: Path, ctx) -> None:

    quality = job.evaluate()
    state["evals"].append({"step": state["step"], "minutes": round(state["elapsed"] / 60, 2), **quality})
    if state["best"] is None or quality.get(job.headline, -math.inf) > state["best"].get(job.headline, -math.inf):
        state["best"] = {"step": state["step"], **quality}
        _atomic_torch_save({k: v.detach().cpu() for k, v in job.student.state_dict().items()}, best_path)
    ctx.console.print(f"  step {state['step']}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in quality.items() if isinstance(v, float)))


def _save_checkpoint(path: Path, job: Job, optimizer, state: dict) -> None:
    import torch

    _atomic_torch_save({"key": job.key, "module": job.module.state_dict(), "optimizer": optimizer.state_dict(),
                        "state": state, "rng": torch.get_rng_state()}, path)


def _resume(path: Path, job: Job, optimizer) -> dict | None:
    """The saved training state when a compatible checkpoint exists; None to start afresh."""
    import torch

    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=False)
    if saved.get("key") != job.key:
        return None
    job.module.load_state_dict(saved["module"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return saved["state"]


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _weights_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _progress(ctx, label: str, total: int | None):
    """A rich progress bar on the main process; `tick(fraction, text)` or `tick()` for one more item."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=ctx.console, disable=not ctx.is_main_process, transient=False) as bar:
        task = bar.add_task(label, total=total or 1000)

        def tick(fraction: float | None = None, text: str | None = None) -> None:
            if fraction is None:
                bar.advance(task)
            else:
                bar.update(task, completed=min(fraction, 1.0) * 1000, description=f"{label} {text or ''}")

        yield tick
