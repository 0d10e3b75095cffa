"""The training machinery shared by the distill and finetune stages.

`train(cfg, ctx, job)` runs AdamW with warm-up and decay, gradient accumulation, length-bucketed batches,
periodic evaluation keeping the best weights, and checkpoints for resumption after an interruption; it runs
under DDP when launched with `compress run --nproc N` (compress/launch.py). A stage describes its work
as a `Job` (the module to train, how to batch, how to evaluate). Also here: the helpers both stages need
(saving a model folder, held-out evaluation, checkpoint keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.errors import StageError
from compress.schema_base import StageBase

# Fields that only say how long (or in which arithmetic) to train: changing them keeps the checkpoint usable
# (resume, then go on): the weights and the optimizer state are fp32 either way.
_LENGTH_FIELDS = {"name", "epochs", "max_steps", "max_minutes", "eval_every", "checkpoint_every", "precision"}
# Processor features that compute bf16 natively (Linux /proc/cpuinfo names; Arm's is "bf16"). Elsewhere bf16
# is emulated and slower than fp32, so precision auto stays fp32 there.
_NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")

class TrainingConfig(StageBase):
    """Training-loop settings shared by distill and finetune."""

    epochs: float | None = Field(default=None, gt=0, description="Passes over the training texts (max_steps wins; "
                                 "default: 1, or as many as max_minutes allows when it is set).")
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
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="Arithmetic of the training steps: bf16 autocast (weights, optimizer state, "
        "the teacher's targets and every evaluation stay fp32) or fp32. auto: bf16 where the processor computes "
        "it natively (x86 avx512_bf16 or amx_bf16, Arm bf16, a CUDA GPU with bf16), else fp32. Measured with "
        "recipes/quickstart.yaml (AMD EPYC with avx512_bf16, 2 cores): 902 steps in its 4 minutes instead of 558, "
        "held-out cosine 0.948 instead of 0.945.")


# ---------------------------------------------------------------- shared by the training stages


def save_model(backbone, source_dir: Path, tmp: Path) -> None:
    """A complete HF folder: tokenizer and sentence-transformers files from `source_dir`, then the weights
    and config (written last, so the model's own config.json wins over the copied one)."""
    from compress.tasks.common import copy_bundle_files

    if not hasattr(backbone, "save_pretrained"):  # a plain torch module: its factory's folder (tasks/factory.py)
        from compress.tasks.factory import save

        return save(backbone, source_dir, tmp)
    tmp.mkdir()
    copy_bundle_files(source_dir, tmp)
    backbone.save_pretrained(tmp)


def evaluate_outputs(task, model, inputs, split, max_length: int, reference) -> dict:
    """The task metric of `model` on a held-out split against the reference outputs; `inputs` is the task's
    input hook for the model (task.inputs(model_dir))."""
    import torch

    from compress import ranks as D
    from compress.tasks.common import unbatch

    todo = inputs.batches(task.examples(split), max_length, 64)
    was_training, outs = model.training, []
    model.eval()
    with torch.inference_mode():
        for batch in todo:
            args = (torch.from_numpy(batch[k]).to(D.device()) for k in inputs.names)
            outs.append(model(*args).float().cpu().numpy())
    model.train(was_training)
    return task.quality(reference, unbatch(outs, todo), split.labels)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_key(cfg, teacher, data_cfg, **extra) -> str:
    """Identifies a checkpoint this run may resume from: same settings (bar length), teacher, data, world size."""
    from compress import ranks as D

    payload = {"cfg": cfg.model_dump(mode="json", exclude=_LENGTH_FIELDS), "teacher": teacher.sha256,
               "data": data_cfg.model_dump(mode="json"), "world": D.rank_world()[1], **extra}
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

    from compress import ranks as D

    rank, world = D.rank_world()
    precision = resolve_precision(cfg.precision, D.device())
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
    total = cfg.max_steps or planned_steps(cfg, per_epoch)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    progress = max(state["step"] / total, state["elapsed"] / budget)
    clock, base_elapsed, loss_avg = time.monotonic(), state["elapsed"], None
    with progress_bar(ctx, f"{ctx.stage_name}: training", None) as tick:
        while progress < 1:
            buckets = _buckets(job.lengths, cfg.batch_size, cfg.seed + state["epoch"])
            sampler = DistributedSampler(range(len(buckets)), num_replicas=world, rank=rank, seed=cfg.seed)
            sampler.set_epoch(state["epoch"])
            order = [buckets[i] for i in sampler]
            chunks = [order[i:i + cfg.grad_accum] for i in range(0, len(order) - cfg.grad_accum + 1, cfg.grad_accum)]
            for k in range(state["chunk"], len(chunks)):
                started = time.monotonic()
                loss = _step(model, optimizer, chunks[k], job.collate, cfg.lr * _lr_factor(cfg, progress), precision)
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
                tick.update(completed=state["step"], fraction=progress, text=f"loss {loss_avg:.4f}, "
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
            "precision": precision,
            "samples_per_s": round(state["samples"] / max(state["train_seconds"], 1e-9), 1),
            "rank_weight_hashes": hashes}


def planned_steps(cfg: TrainingConfig, per_epoch: int) -> float:
    """Steps the epochs allow; unbounded when only max_minutes is given (time, not one epoch, ends training)."""
    if cfg.epochs is None:
        return math.inf if cfg.max_minutes else per_epoch
    return max(1, math.ceil(cfg.epochs * per_epoch))


def resolve_precision(requested: str, device, flags: dict | None = None) -> str:
    """The arithmetic of the training steps: the recipe's, or for auto bf16 where the hardware has it natively
    (`flags`: this machine's CPU features by default)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if flags is None:
        from compress.targets.cpu import cpu_info

        flags = cpu_info()["flags"]
    return "bf16" if any(flags.get(name) for name in _NATIVE_BF16) else "fp32"


def _step(model, optimizer, chunk: list[list[int]], collate, lr: float, precision: str = "fp32") -> float:
    import torch

    from compress import ranks as D

    for group in optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for j, index in enumerate(chunk):
        batch = {k: v.to(D.device()) for k, v in collate(index).items()}
        # Under DDP, gradients are averaged over processes only on the last batch of an accumulation.
        last = j == len(chunk) - 1 or not hasattr(model, "no_sync")
        # Autocast covers the forward pass only; the modules compute their losses in fp32 (see distill.py).
        autocast = torch.autocast(D.device().type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with contextlib.nullcontext() if last else model.no_sync():
            with autocast:
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
def progress_bar(ctx, label: str, total: int | None, unit: str = "step"):
    """Progress of long work on the main process (compress/progress.py: a rich bar on a terminal, a plain line at
    least every 30 s in a log); yields a Tracker: `tick()` for one more item, `tick(fraction, text)`, `tick.update()`."""
    from compress.progress import track

    with track(ctx.console, label, total, unit=unit, enabled=ctx.is_main_process) as tracker:
        yield tracker
