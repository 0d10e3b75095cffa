"""The distill stage for `student: {static: ...}`: a static-embedding student (compress/static.py).

model2vec's table from the teacher (every vocabulary token through it once: 16-80 s for all-MiniLM-L6-v2 on 2
cores), then, unless `regression: null`, the table and a linear head trained onto the teacher's embeddings of the
recipe's training texts (the cached targets every distill stage shares) for `regression.epochs`, or until
max_minutes (the training loop's budget, as for every student) is up. Evaluated on the
held-out split like every student; saved as artifact `student-static` (model2vec's format) with role student.
"""

from __future__ import annotations

import time

from pydantic import Field

from compress.errors import StageError
from compress.schema_base import StrictModel
from compress.stages.distill_targets import cached_teacher_outputs, with_unlabeled

ARTIFACT = "student-static"


class StaticRegression(StrictModel):
    epochs: float = Field(default=5.0, gt=0, description="Passes over the training texts (the stage's max_minutes "
                          "stops it earlier).")
    lr: float = Field(default=1e-3, gt=0, description="Adam's learning rate for the table and the head.")
    batch_size: int = Field(default=256, ge=1, description="Texts per step.")


class StaticSpec(StrictModel):
    pca_dims: int | None = Field(
        default=256, ge=2, description="Width of model2vec's table after PCA (null: the teacher's width). With "
        "regression the student's embedding has the teacher's width whatever this is.")
    vocab: int | None = Field(
        default=None, ge=1, description="Rows for the N tokens most frequent in the recipe's training texts only: "
        "the teacher's pass runs on those (its time is about proportional to N) and a text's other tokens are "
        "skipped, as model2vec skips unknown ones (null: every token of the teacher's vocabulary, 30,522 for "
        "MiniLM).")
    sif_coefficient: float | None = Field(
        default=1e-4, gt=0, lt=1, description="model2vec's SIF weighting of tokens by frequency rank (null: none).")
    regression: StaticRegression | None = Field(
        default_factory=StaticRegression, description="Train the table and a linear head onto the teacher's "
        "embeddings of the recipe's texts, then fold the head into the table (the embedding then has the teacher's "
        "width and is searchable in its index; shared/clients.md: cosine 0.78 -> 0.82 on the quickstart's data); "
        "null: model2vec's table as it is (another space: compared to the teacher by top-10 agreement only).")


def run_static(cfg, ctx) -> list:
    from compress import static

    task, spec = ctx.task, cfg.student.static
    if task.NAME != "sentence-embedding":
        raise StageError(f"student.static makes sentence-embedding students; task {task.NAME} needs another "
                         "student (from_teacher, config or source)")
    teacher = ctx.teacher()
    data, max_length = with_unlabeled(task.load_data(ctx.recipe.data)), cfg.max_length or ctx.recipe.data.max_length
    from compress import ranks

    net = task.load_backbone(teacher.path, ctx.recipe.teacher.trust_remote_code).to(ranks.device()).eval()
    started = time.monotonic()
    # Every process takes part (under --nproc the teacher's outputs are split over them); the rest is rank 0's.
    targets, cached = cached_teacher_outputs(ctx, task, teacher, net, data, max_length)
    if not ctx.is_main_process:
        return []
    made = time.monotonic()
    inputs = task.inputs(teacher.path)
    keep = None
    if spec.vocab is not None:  # the training texts' most frequent tokens
        ids = inputs.tokenizer(task.examples(data.train), truncation=True, max_length=max_length)["input_ids"]
        keep = static.frequent_ids(ids, spec.vocab)
    try:
        table = static.distill_table(net, teacher.path, spec.pca_dims, spec.sif_coefficient,
                                     ranks.device().type, keep)
    except ValueError as exc:
        raise StageError(f"student.static: model2vec cannot distill the teacher: {exc}") from None
    ctx.metrics["static_distill_seconds"] = round(time.monotonic() - made, 2)
    del net
    eval_ids = inputs.encode(task.examples(data.eval), max_length)

    def quality(t):
        return task.quality(targets["eval"], static.encode(t, eval_ids["input_ids"], eval_ids["attention_mask"]))

    before = quality(table)
    info = {}
    if spec.regression is not None:
        texts = task.examples(data.train)
        _, collate = inputs.training(texts, max_length)
        reg = spec.regression  # max_minutes bounds the training loop, as for every student
        table, info = static.regress(
            table, collate, len(texts), targets["train"], reg.epochs, reg.lr, reg.batch_size,
            cfg.max_minutes * 60 if cfg.max_minutes else None, cfg.seed,
            log=lambda step, total, loss: ctx.console.print(f"  static regression step {step}/{total}: "
                                                            f"loss {loss:.4f}"))
    after = quality(table)
    params = int(table.size)
    ctx.metrics.update(quality_before=before, quality_after=after, student_params=params, targets_cached=cached,
                       static={"dims": int(table.shape[1]), "vocab": int(table.shape[0]), **info},
                       train_seconds=round(time.monotonic() - started, 2))
    ctx.console.print(f"  static student: {task.HEADLINE} {after.get(task.HEADLINE)}, top-10 "
                      f"{after.get('top10_agreement')} ({table.shape[0]} x {table.shape[1]} table)")
    config = {"teacher": teacher.name, "pca_dims": spec.pca_dims, "sif_coefficient": spec.sif_coefficient,
              "vocab": spec.vocab, "rows": int(static.content_mask(table).sum()),
              "regression": spec.regression.model_dump() if spec.regression else None, "max_length": max_length}
    meta = {"role": "student", "kind": "static", "params": params, "teacher": teacher.name, "quality": after}
    return [ctx.save(ARTIFACT, "hf-model", lambda tmp: static.save(tmp, table, teacher.path, config), meta)]
