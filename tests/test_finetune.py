"""Stage finetune: a classification head trained on labelled data, reproducibly, marked as the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.artifacts import Artifact, sha256_path
from compress.context import RunContext
from compress.errors import StageError
from compress.recipe import parse_recipe
from compress.stages import STAGES

STAGE = "{kind: finetune, max_steps: 3, batch_size: 16, seed: 3}"


def _run(run_dir: Path, model: Path, data: Path, task: str = "text-classification", labels: bool = True):
    label = ", label_field: category, labels: [fresh, rotten]" if labels else ""
    recipe = parse_recipe(
        f"version: 1\nname: t\ntask: {task}\nteacher: {{source: '{model}'}}\n"
        f"data: {{source: '{data}', text_field: text, eval_size: 20, max_length: 32{label}}}\n"
        f"stages:\n  - {STAGE}\n")
    teacher = Artifact("teacher", model, "hf-model", sha256_path(model), {"role": "teacher"})
    ctx = RunContext(run_dir, recipe, "finetune", {"teacher": teacher})
    return STAGES["finetune"].run(recipe.stages[0], ctx), ctx


def test_finetune_writes_classifier_marked_as_teacher(tmp_path, tiny_bert, tiny_texts):
    import torch

    from compress.tasks import text_classification as task
    from compress.tasks.common import load_tokenizer, tokenize

    (artifact,), ctx = _run(tmp_path, tiny_bert, tiny_texts)

    assert artifact.name == "teacher-finetuned" and artifact.metadata["role"] == "teacher"
    assert artifact.metadata["labels"] == ["fresh", "rotten"] and ctx.metrics["steps"] == 3
    assert {"accuracy", "macro_f1"} <= set(ctx.metrics["quality_after"])
    assert task.label_names(artifact.path) == ["fresh", "rotten"]
    assert json.loads((artifact.path / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    batch = tokenize(load_tokenizer(artifact.path), ["a good film"], 16)
    logits = task.load_model(artifact.path)(*(torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask")))
    assert tuple(logits.shape) == (1, 2)


def test_finetune_is_reproducible_with_a_seed(tmp_path, tiny_bert, tiny_texts):
    (first,), _ = _run(tmp_path / "a", tiny_bert, tiny_texts)
    (second,), _ = _run(tmp_path / "b", tiny_bert, tiny_texts)

    assert sha256_path(first.path / "model.safetensors") == sha256_path(second.path / "model.safetensors")


@pytest.mark.parametrize("task, labels, error", [
    ("text-classification", False, "has no labels"),
    ("sentence-embedding", True, "trains a classifier"),
])
def test_finetune_refuses_what_it_cannot_train(tmp_path, tiny_bert, tiny_texts, task, labels, error):
    with pytest.raises(StageError, match=error):
        _run(tmp_path, tiny_bert, tiny_texts, task=task, labels=labels)


# ---------------------------------------------------------------- the shared training loop (compress/training.py)


@pytest.mark.parametrize("schedule, progress, expected", [
    ("linear", 0.05, 0.51),  # warm-up (0.1): half way up
    ("linear", 0.55, 0.5),
    ("linear", 1.0, 0.0),
    ("cosine", 0.55, 0.5),
    ("cosine", 1.0, 0.0),
    ("constant", 0.9, 1.0),
])
def test_training_lr_factor_follows_schedule(schedule, progress, expected):
    from compress.training import TrainingConfig, _lr_factor

    cfg = TrainingConfig(warmup=0.1, schedule=schedule)

    assert _lr_factor(cfg, progress) == pytest.approx(expected, abs=1e-9)


def test_training_buckets_cover_every_example_once_with_little_padding():
    from compress.training import _buckets

    lengths = [(i * 37) % 97 + 1 for i in range(1000)]

    batches = _buckets(lengths, 16, seed=1)

    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 16 for b in batches[:-1])
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 16 from 1..97 would spread over ~80 tokens
    assert _buckets(lengths, 16, seed=1) == batches and _buckets(lengths, 16, seed=2) != batches


@pytest.mark.parametrize("change, same", [
    ({"epochs": 5, "max_steps": 9, "max_minutes": 2, "eval_every": 1, "checkpoint_every": 1}, True),
    ({"lr": 1e-3}, False),
    ({"batch_size": 8}, False),
    ({"seed": 1}, False),
])
def test_training_checkpoint_key_ignores_only_length_fields(tiny_bert, tiny_texts, change, same):
    from compress.recipe import DataConfig
    from compress.training import TrainingConfig, checkpoint_key

    teacher = Artifact("teacher", tiny_bert, "hf-model", "abc", {"role": "teacher"})
    data = DataConfig(source=str(tiny_texts))
    base = TrainingConfig()

    key = checkpoint_key(base.model_copy(update=change), teacher, data, labels=["a", "b"])

    assert (key == checkpoint_key(base, teacher, data, labels=["a", "b"])) is same
    assert key != checkpoint_key(base.model_copy(update=change), teacher, data, labels=["b", "a"])


@pytest.mark.parametrize("quality, warned", [
    ({"accuracy": 0.396, "chance_accuracy": 0.396}, True),    # one pass over 600 rows: the majority class only
    ({"accuracy": 0.44, "chance_accuracy": 0.396}, True),     # within the margin of chance
    ({"accuracy": 0.716, "chance_accuracy": 0.396}, False),
    (None, False),
])
def test_finetune_warns_when_the_teacher_learned_nothing(quality, warned):
    from types import SimpleNamespace

    from rich.console import Console

    from compress.stages.finetune import warn_at_chance

    ctx = SimpleNamespace(console=Console(record=True, width=200))
    warn_at_chance(ctx, quality, 20)
    text = ctx.console.export_text()
    assert ("scores at chance on the held-out labels" in text and "after 20 steps" in text) == warned
