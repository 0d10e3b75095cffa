"""Stage distill: train a smaller student to copy the teacher (the latest hf-model with role "teacher").

The student is built from the recipe (teacher layers, a config, or any model), trained on the recipe's
training texts (and data.unlabeled's) against the teacher's outputs, evaluated on the held-out split with the task metric, and
saved as a complete Hugging Face folder (artifact `student`). The teacher's outputs are computed once and
cached in the work dir: on 2 cores they cost more than an epoch of training (shared/onnx-notes.md).
Feature losses (hidden-mse, attention) need the teacher's internals, so the teacher then runs in the loop.
Training runs in the loop shared with the finetune stage (compress/training.py): DDP under `--nproc N`,
resumption from the last checkpoint after an interruption.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from compress import pairing
from compress.errors import StageError
from compress.schema_base import StrictModel
from compress.stages.distill_static import StaticSpec, run_static
from compress.stages.distill_targets import UNLABELED, cached_teacher_outputs, teacher_outputs, with_unlabeled
from compress.stages.layer_choice import FromTeacher
from compress.tasks import embedding_head
from compress.training import (
    Job,
    TrainingConfig,
    checkpoint_key,
    evaluate_outputs,
    param_count,
    save_model,
    train,
)

Loss = Literal["cosine", "mse", "similarity", "logit-kd", "hidden-mse", "attention", "sequence", "token-kl"]
OUTPUT_LOSSES = ("cosine", "mse", "similarity", "logit-kd")
_LAYER = re.compile(r"^(.*?\b(?:layer|layers|h|block))\.(\d+)\.(.*)$")


class VocabSpec(StrictModel):
    trim: bool = Field(default=False, description="Keep only the word pieces the training texts use, plus special "
                       "tokens and every single-character piece (compress/vocab.py); a matching tokenizer is written.")
    extra: list[str] = Field(default_factory=list, description="Words whose pieces are kept as well.")


class StudentSpec(StrictModel):
    static: StaticSpec | None = Field(
        default=None, description="sentence-embedding: a static-embedding student (the model2vec approach: one "
        "vector per token, averaged; no transformer at run time; compress/static.py). Saved as artifact "
        "student-static in model2vec's format; exported to ONNX like any model.")
    from_teacher: FromTeacher | None = Field(default=None, description="Copy embeddings, these layers and the head (DistilBERT-style).")
    config: dict | None = Field(default=None, description="Overrides of the teacher's config; random init.")
    source: str | None = Field(default=None, description="Any model: local path, package:..., or hub id. It keeps "
                               "its own tokenizer and width.")
    projection: Literal["linear", "pca", "none"] | None = Field(
        default=None, description="sentence-embedding, a student of another width: linear = a learned head to the "
        "teacher's width, exported inside the ONNX graph (searchable in the teacher's index); pca = the teacher's "
        "targets reduced by PCA to the student's width (the index must be rebuilt). Default: linear when the "
        "widths differ, none otherwise.")
    projection_init: Literal["lstsq", "random"] = Field(
        default="lstsq", description="projection linear: start from the least-squares map of the pretrained "
        "student's embeddings onto the teacher's training targets, or from random weights.")
    vocab: VocabSpec | None = Field(default=None, description="Vocabulary trimming of the student (WordPiece).")

    @model_validator(mode="after")
    def _exactly_one(self) -> StudentSpec:
        given = [k for k in ("from_teacher", "config", "source", "static") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of from_teacher, config, source, static (got {given or 'none'})")
        if self.static is not None and (self.vocab or self.projection):
            raise ValueError("student.static takes no vocab or projection (its table has the teacher's vocabulary; "
                             "regression maps it to the teacher's width)")
        return self


class Config(TrainingConfig):
    consumes = ("hf-model",)
    produces = ("hf-model",)
    distributed: ClassVar[bool] = True  # the runner may launch it under torchrun

    kind: Literal["distill"] = "distill"
    lr: float = Field(default=3e-4, gt=0, description="Peak learning rate of AdamW (3e-4: MiniLM {0,2,5} reached "
                      "cosine 0.90 in 5 minutes on 2 CPU cores).")
    student: StudentSpec = Field(description="How the student is made.")
    loss: Loss | None = Field(default=None, description="One loss (default: the task's: cosine, logit-kd, or for "
                              "causal-lm sequence: cross-entropy on the teacher's generated text; token-kl: KL on "
                              "the teacher's next-token distributions).")
    losses: dict[Loss, float] | None = Field(
        default=None, description="Several losses with weights, e.g. {cosine: 1.0, hidden-mse: 0.5}; similarity "
        "matches the batch's cosine-similarity matrix to the teacher's (measured on the quickstart: {cosine: 1, "
        "similarity: 1} was worse than cosine alone after 100 steps, 0.871 vs 0.920).")
    freeze_embeddings: bool | None = Field(
        default=None, description="Keep the word embeddings fixed (default: yes when copied from the teacher); "
        "they are most of a small student's weights, so steps get cheaper on CPU.")
    train_on: Literal["auto", "generated", "data"] = Field(
        default="auto", description="causal-lm: the text the student learns from: the teacher's generated dataset "
        "(auto: when a generate stage ran) or the recipe's data texts (a control without the teacher's text). "
        "Held-out quality is measured on the generated text either way.")
    save_initial: bool = Field(
        default=False, description="Also save the student as it is before training (artifact student-initial, "
        "e.g. a pretrained model with an untrained projection), so the bench shows what distillation added.")
    temperature: float = Field(default=2.0, gt=0, description="logit-kd and token-kl: softmax temperature.")
    kl_targets: Literal["auto", "cached", "online"] = Field(
        default="auto", description="token-kl: the teacher's top-k kept by the generate stage (cached; its top_k), or "
        "the teacher run in the loop (online: full distributions, a teacher forward per step); auto: cached if kept.")
    alpha: float = Field(default=0.5, ge=0, le=1, description="logit-kd: weight of the hard-label loss when labels exist.")

    @model_validator(mode="after")
    def _one_loss_field(self) -> Config:
        if self.loss and self.losses:
            raise ValueError("give either loss or losses, not both")
        return self


def run(cfg: Config, ctx) -> list:
    import torch

    from compress import ranks as D

    task, trust = ctx.task, ctx.recipe.teacher.trust_remote_code
    if cfg.student.static is not None:
        return run_static(cfg, ctx)
    teacher = ctx.teacher()
    losses = dict(cfg.losses or {cfg.loss or task.DEFAULT_LOSS: 1.0})
    lm_only = [name for name in losses if name in ("sequence", "token-kl")]
    if lm_only:
        raise StageError(f"loss {lm_only[0]} does not apply to task {task.NAME} (it is for causal-lm)")
    if "logit-kd" in losses and task.OUTPUT_NAME != "logits":
        raise StageError(f"loss logit-kd needs a task with logits; task {task.NAME} outputs {task.OUTPUT_NAME}")
    from compress.tasks.common import for_model

    data = with_unlabeled(for_model(task, task.load_data(ctx.recipe.data), teacher.path, ctx.recipe.data.source))
    max_length = cfg.max_length or ctx.recipe.data.max_length
    teacher_net = task.load_backbone(teacher.path, trust).to(D.device()).eval()
    if set(losses) - set(OUTPUT_LOSSES) and not hasattr(teacher_net, "config"):
        raise StageError(f"losses hidden-mse and attention need a transformer's hidden states; task {task.NAME} "
                         f"can use {', '.join(OUTPUT_LOSSES)}")
    if "attention" in losses:  # fused (sdpa) attention returns no attention maps; students copy this config
        teacher_net = eager(teacher_net)
    torch.manual_seed(cfg.seed)
    student_net, student_dir, pairs = build_student(cfg.student, task, teacher.path, teacher_net, trust, ctx.work_dir)
    student_net, student_dir, shaped, kept = shape_student(cfg.student, task, student_net, student_dir, data, ctx,
                                                     max_length)
    if "attention" in losses:
        student_net = eager(student_net)
    if cfg.freeze_embeddings if cfg.freeze_embeddings is not None else bool(cfg.student.from_teacher):
        if not hasattr(student_net, "get_input_embeddings"):
            raise StageError(f"freeze_embeddings: the student of task {task.NAME} has no word embeddings")
        student_net.get_input_embeddings().weight.requires_grad_(False)
    widths = _widths(student_net, teacher_net)
    projection = pairing.resolve_projection(cfg.student.projection, task, *widths, losses)
    if kept is None:  # a trimmed vocabulary maps its ids back to the teacher's: positions still line up
        pairing.check_tokenizers(losses, teacher.path, student_dir)
    head = embedding_head.new_linear(*widths, cfg.seed) if projection == "linear" else None
    inputs = task.inputs(student_dir)
    started = time.monotonic()
    targets, cached = cached_teacher_outputs(ctx, task, teacher, teacher_net, data, max_length)
    pca = embedding_head.fit_pca(targets["train"], widths[0]) if projection == "pca" else None
    if head is not None and cfg.student.projection_init == "lstsq":  # start from the best linear map
        own = teacher_outputs(task.wrap(student_net, student_dir, torch.nn.Identity()), inputs,
                              task.examples(data.train), max_length, ctx)
        ctx.metrics["projection_fit_cosine"] = round(embedding_head.fit_linear(head, own, targets["train"]), 4)
    if pca is not None:  # the student learns the teacher's space reduced to its own width
        targets = {k: embedding_head.apply_pca(pca, v) for k, v in targets.items()}
    ctx.metrics.update(unlabeled_texts=len(getattr(data, "unlabeled", None) or []))
    ctx.metrics.update(teacher_params=param_count(teacher_net), student_params=param_count(student_net),
                       precompute_seconds=round(time.monotonic() - started, 2), targets_cached=cached,
                       losses=losses, **shaped)
    online = any(name not in OUTPUT_LOSSES for name in losses)
    if not online:
        del teacher_net  # its cached outputs are all we need now
    module = distiller_module(task, student_net, student_dir, teacher_net if online else None, losses, pairs, cfg,
                              head)
    module.to_teacher = torch.tensor(kept) if online and kept else None
    lengths, encode = inputs.training(task.examples(data.train), max_length)
    train_targets = torch.from_numpy(targets["train"]) if "train" in targets else None

    def collate(index: list[int]) -> dict:
        batch = encode(index)
        if train_targets is not None:
            batch["target"] = train_targets[index]
        if data.train.labels is not None:
            batch["labels"] = torch.tensor([data.train.labels[i] for i in index])
        return batch

    job = Job(module=module, student=module.student, lengths=lengths, collate=collate,
              evaluate=lambda: evaluate_outputs(task, module.student, inputs, data.eval, max_length,
                                                targets["eval"]),
              headline=task.HEADLINE, key=checkpoint_key(cfg, teacher, ctx.recipe.data))
    index = pairing.index_note(projection, *widths) if task.OUTPUT_NAME == "embedding" else {}

    def write(tmp: Path) -> None:
        save_model(student_net, student_dir, tmp)
        if head is not None:  # trained with the student (module.student holds it)
            embedding_head.write_dense(tmp, module.student.head)
        if pca is not None:
            embedding_head.write_pca(tmp, pca)

    out = []
    if cfg.save_initial and ctx.is_main_process:  # before any training step: the "before" row of the table
        module.features(False)
        out.append(ctx.save("student-initial", "hf-model", write, {"role": "student-initial", **index}))
        module.features(True)
    result = train(cfg, ctx, job)
    ctx.metrics.update(result)
    if not ctx.is_main_process:
        return []
    module.features(False)
    ctx.metrics.update(index)
    meta = {"role": "student", "params": ctx.metrics["student_params"], "teacher": teacher.name,
            "quality": ctx.metrics["quality_after"], **index, **shaped}
    return [*out, ctx.save("student", "hf-model", write, meta)]


def _widths(student_net, teacher_net) -> tuple[int, int]:
    """(student, teacher) hidden sizes; 0 for models without a transformer config."""
    return tuple(getattr(getattr(n, "config", None), "hidden_size", 0) for n in (student_net, teacher_net))



# ---------------------------------------------------------------- the student


def shape_student(spec: StudentSpec, task, net, folder: Path, data, ctx, max_length: int):
    """Width pruning and vocabulary trimming of a built student: (student, its tokenizer folder, what was kept,
    the teacher's id of each student token id or None)."""
    import torch

    shaped, kept = {}, None
    wide = spec.from_teacher and (spec.from_teacher.ffn < 1 or spec.from_teacher.heads < 1)
    if wide and not hasattr(task, "build_student"):
        from compress.pruning import prune

        todo = task.inputs(folder).batches(task.examples(data.train)[:512], max_length, 32)
        batches = [{k: torch.from_numpy(b[k]) for k in ("input_ids", "attention_mask")} for b in todo]
        net, shaped["pruning"] = prune(net, batches, spec.from_teacher.heads, spec.from_teacher.ffn)
    if spec.vocab and spec.vocab.trim:
        from compress import vocab

        trimmed = vocab.choose(folder, task.examples(data.train), spec.vocab.extra)
        vocab.slice_embeddings(net, trimmed)
        shaped["vocab"], kept = vocab.coverage(folder, trimmed, task.examples(data.eval)), trimmed.kept
        folder = vocab.trimmed_folder(folder, ctx.work_dir / "student-tokenizer", trimmed)
    return net, folder, shaped, kept


def build_student(spec: StudentSpec, task, teacher_dir: Path, teacher, trust: bool, work_dir: Path | None = None):
    """(backbone, folder its tokenizer/pooling files come from, [(student, teacher) hidden-state index pairs])."""
    if hasattr(task, "build_student"):  # models that are not transformers (image-classification)
        return task.build_student(spec, teacher, work_dir, trust)
    try:
        if spec.from_teacher:
            layers, count = spec.from_teacher.layers, teacher.config.num_hidden_layers
            if layers == "auto":
                raise StageError("student.from_teacher.layers auto is measured for task causal-lm only; list the layers")
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
        if task.OUTPUT_NAME == "logits" and hasattr(teacher, "config"):
            pairing.check_labels(teacher.config, path)
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


def distiller_module(task, student_net, student_dir, teacher_net, losses, pairs, cfg, head=None):
    """The module DDP trains: the task-wrapped student, hidden-state projections, and the losses."""
    import torch
    import torch.nn.functional as F

    class Distiller(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = task.wrap(student_net, student_dir, head) if head is not None else task.wrap(
                student_net, student_dir)
            # Plain attributes, not submodules: the teacher must stay out of the optimizer and checkpoints.
            object.__setattr__(self, "nets", (student_net, teacher_net))
            self.losses, self.pairs = losses, pairs
            self.captured: dict = {}
            self.to_teacher = None  # student token id -> teacher token id, when the vocabulary was trimmed
            student_net.register_forward_hook(lambda _m, _i, out: self.captured.__setitem__("out", out))
            ds, dt = (student_net.config.hidden_size, teacher_net.config.hidden_size) if "hidden-mse" in losses else (0, 0)
            # A learned projection maps student widths onto the teacher's when they differ.
            self.proj = torch.nn.ModuleList(
                torch.nn.Linear(ds, dt) if ds != dt else torch.nn.Identity()
                for _ in (pairs if "hidden-mse" in losses else []))
            self.features(True)

        def features(self, on: bool) -> None:
            """Ask the backbones for hidden states / attention maps only when a loss needs them."""
            for net in self.nets:
                if net is None or not hasattr(net, "config"):
                    continue
                net.config.output_hidden_states = on and "hidden-mse" in self.losses
                net.config.output_attentions = on and "attention" in self.losses

        def forward(self, target=None, labels=None, **inputs):
            # Losses in fp32 even when the forward pass ran under bf16 autocast (training precision).
            out = self.student(*(inputs[n] for n in task.INPUT_NAMES)).float()
            total = 0.0
            for name, weight in self.losses.items():
                total = total + weight * self._loss(name, out, target, labels, inputs)
            return total

        def _loss(self, name, out, target, labels, inputs):
            if name == "cosine":
                return 1 - F.cosine_similarity(out, target, dim=-1).mean()
            if name == "mse":  # summed over features: on unit vectors a per-element mean is too small to learn
                return ((out - target) ** 2).sum(-1).mean()
            if name == "similarity":  # relational: the batch's cosine-similarity matrix, which retrieval ranks by
                mine, ref = F.normalize(out, dim=-1), F.normalize(target, dim=-1)
                return ((mine @ mine.T - ref @ ref.T) ** 2).sum(-1).mean()
            if name == "logit-kd":
                t = cfg.temperature
                soft = F.kl_div(F.log_softmax(out / t, -1), F.softmax(target / t, -1), reduction="batchmean") * t * t
                if labels is None or cfg.alpha == 0:
                    return soft
                known = labels != UNLABELED  # data.unlabeled rows: soft targets only
                if not bool(known.any()):
                    return (1 - cfg.alpha) * soft
                hard = F.cross_entropy(out[known], labels[known]) * known.float().mean()
                return (1 - cfg.alpha) * soft + cfg.alpha * hard
            # The teacher's features are targets: fp32 whatever the student's training precision.
            with torch.no_grad(), torch.autocast(inputs["input_ids"].device.type, enabled=False):
                ids = inputs["input_ids"]  # a trimmed vocabulary: the teacher reads the original ids
                ids = ids if self.to_teacher is None else self.to_teacher.to(ids.device)[ids]
                ref = self.nets[1](**{**inputs, "input_ids": ids})
            mine, mask = self.captured["out"], inputs["attention_mask"].unsqueeze(-1).to(out.dtype)
            if name == "hidden-mse":
                parts = [((p(mine.hidden_states[s]).float() - ref.hidden_states[t]) ** 2 * mask).sum()
                         / (mask.sum() * ref.hidden_states[t].shape[-1])
                         for (s, t), p in zip(self.pairs, self.proj)]
                return sum(parts) / len(parts)
            parts = [_attention_kl(mine.attentions[s - 1].float(), ref.attentions[t - 1], mask)
                     for s, t in self.pairs if s]
            return sum(parts) / len(parts)

    return Distiller()


def _attention_kl(student, teacher, mask):
    """KL(teacher || student) of attention rows of real (not padding) query tokens, averaged over heads."""
    if student.shape[1] != teacher.shape[1]:  # different head counts: compare the heads' average
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    kl = (teacher * (teacher.clamp_min(1e-9).log() - student.clamp_min(1e-9).log())).sum(-1)
    query = mask.squeeze(-1).unsqueeze(1)
    return (kl * query).sum() / (query.sum() * kl.shape[1])
