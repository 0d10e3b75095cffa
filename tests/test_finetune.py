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
