"""Stage finetune: train the teacher with a classification head on the recipe's labelled data.

Produces hf-model `teacher-finetuned` with role "teacher", which later stages (distill, export) use as the
teacher. Reproducible: the head's initialisation, data order and dropout follow `seed`. Uses the training
loop shared with distill (compress/training.py: warm-up + decay, periodic eval keeping the best weights,
checkpoint/resume, DDP). An image-classification model (a Python factory's) keeps its own head: its outputs
must be the data's classes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from compress.errors import StageError
from compress.training import TrainingConfig

OUTPUT = "teacher-finetuned"


class Config(TrainingConfig):
    consumes = ("hf-model",)
    produces = ("hf-model",)
    distributed: ClassVar[bool] = True

    kind: Literal["finetune"] = "finetune"
    epochs: float = Field(default=2, gt=0, description="Passes over the training texts (max_steps wins).")
    lr: float = Field(default=5e-5, gt=0, description="Peak learning rate of AdamW.")
    warmup: float = Field(default=0.1, ge=0, lt=1, description="Share of training spent warming the LR up.")


def run(cfg: Config, ctx) -> list:
    import torch

    from compress.training import (
        Job,
        checkpoint_key,
        evaluate_outputs,
        param_count,
        save_model,
        train,
    )

    task = ctx.task
    if task.OUTPUT_NAME != "logits":
        raise StageError(f"stage {ctx.stage_name}: finetune trains a classifier; the recipe's task is {task.NAME} "
                         "(use task: text-classification or image-classification)")
    data = task.load_data(ctx.recipe.data)
    if data.train.labels is None or not data.label_names:
        raise StageError(f"stage {ctx.stage_name}: the data has no labels; set data.label_field (and data.labels)")
    teacher, max_length = ctx.teacher(), cfg.max_length or ctx.recipe.data.max_length
    names = list(data.label_names)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    net = task.load_backbone(teacher.path, ctx.recipe.teacher.trust_remote_code,
                             id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    inputs = task.inputs(teacher.path)
    model = classifier_module(task.wrap(net, teacher.path), inputs.names)
    lengths, encode = inputs.training(task.examples(data.train), max_length)

    def collate(index: list[int]) -> dict:
        return {**encode(index), "labels": torch.tensor([data.train.labels[i] for i in index])}

    def evaluate() -> dict:
        # No reference to copy here: score against the labels; agreement with itself says nothing.
        metrics = evaluate_outputs(task, model.wrapped, inputs, data.eval, max_length, None)
        return {k: v for k, v in metrics.items() if k != "agreement"}

    job = Job(module=model, student=model.wrapped, lengths=lengths, collate=collate,
              evaluate=evaluate, headline=task.HEADLINE, key=checkpoint_key(cfg, teacher, ctx.recipe.data, labels=names))
    ctx.metrics.update(params=param_count(net), labels=names, **train(cfg, ctx, job))
    if not ctx.is_main_process:
        return []
    warn_at_chance(ctx, ctx.metrics.get("quality_after"), ctx.metrics.get("steps"))
    meta = {"role": "teacher", "source": teacher.name, "labels": names, "params": ctx.metrics["params"],
            "quality": ctx.metrics["quality_after"]}
    return [ctx.save(OUTPUT, "hf-model", lambda tmp: save_model(net, teacher.path, tmp), meta)]


def warn_at_chance(ctx, quality: dict | None, steps) -> None:
    """Say it at once when training taught the teacher nothing: everything after it would be wasted on it."""
    from compress.tasks.quality_basis import at_chance, one_class

    if one_class(quality):
        ctx.console.print(
            f"  [yellow]the held-out part has one class only: {OUTPUT}'s held-out accuracy "
            f"({quality['accuracy']:.4f}) says nothing about what it learned; give data.eval_size more rows, or an "
            "eval split with every class[/yellow]", highlight=False)
    elif at_chance(quality):
        ctx.console.print(
            f"  [yellow]{OUTPUT} scores at chance on the held-out labels (accuracy {quality['accuracy']:.4f}; "
            f"always answering the most common label: {quality['chance_accuracy']:.4f}) after {steps} steps: "
            "train it longer (epochs, max_steps or max_minutes) or check the labels[/yellow]", highlight=False)


def classifier_module(wrapped, names: tuple[str, ...]):
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wrapped = wrapped

        def forward(self, labels, **inputs):
            logits = self.wrapped(*(inputs[n] for n in names)).float()  # fp32 loss under bf16 autocast
            return torch.nn.functional.cross_entropy(logits, labels)

    return Classifier()
