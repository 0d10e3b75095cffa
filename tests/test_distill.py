"""Stage distill on tiny in-process BERTs: student construction, losses, saving, checkpoint/resume; and the
text-classification task's metric. One slow test distills the packaged MiniLM for real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA, REAL_MODEL, make_tiny_bert

from compress import training
from compress.artifacts import Artifact, sha256_path
from compress.context import RunContext
from compress.errors import RecipeError
from compress.recipe import parse_recipe
from compress.stages import STAGES, distill


def _recipe(model: Path, data: Path, stage: str, task: str = "sentence-embedding", labels: bool = False,
            more: str = ""):
    label = ", label_field: category, labels: [fresh, rotten]" if labels else ""
    label += f", {more}" if more else ""
    text = (f"version: 1\nname: t\ntask: {task}\nteacher: {{source: '{model}'}}\n"
            f"data: {{source: '{data}', text_field: text, eval_size: 20, max_length: 32{label}}}\n"
            f"stages:\n  - {stage}\n")
    return parse_recipe(text)


def _run(run_dir: Path, recipe, teachers: dict[str, Path] | None = None):
    artifacts = {name: Artifact(name, path, "hf-model", sha256_path(path), {"role": "teacher"})
                 for name, path in (teachers or {"teacher": Path(recipe.teacher.source)}).items()}
    ctx = RunContext(run_dir, recipe, recipe.stages[0].name, artifacts)
    stage = recipe.stages[0]
    return STAGES[stage.kind].run(stage, ctx), ctx


def _state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny3"), layers=3)


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tinycls"), layers=3, num_labels=2)


def test_build_student_copies_chosen_teacher_layers(tiny3):
    from compress.tasks import sentence_embedding as task

    teacher = task.load_backbone(tiny3)
    spec = distill.StudentSpec(from_teacher={"layers": [0, 2]})

    student, folder, pairs = distill.build_student(spec, task, tiny3, teacher, False)

    assert folder == tiny3 and student.config.num_hidden_layers == 2
    assert pairs == [(0, 0), (1, 1), (2, 3)]
    t, s = teacher.state_dict(), student.state_dict()
    assert all((s[k] == t[k]).all() for k in s if ".layer." not in k)
    for key in (k for k in s if k.startswith("encoder.layer.1.")):
        assert (s[key] == t[key.replace("layer.1.", "layer.2.")]).all()


@pytest.mark.parametrize("spec, error", [
    ({"from_teacher": {"layers": [0, 7]}}, "has layers 0..2"),
    ({"config": {"no_such_field": 1}}, "not a field"),
])
def test_build_student_rejects_bad_specs(tiny3, spec, error):
    from compress.errors import StageError
    from compress.tasks import sentence_embedding as task

    with pytest.raises(StageError, match=error):
        distill.build_student(distill.StudentSpec(**spec), task, tiny3, task.load_backbone(tiny3), False)


@pytest.mark.parametrize("stage, error", [
    ("{kind: distill, student: {}}", "exactly one of"),
    ("{kind: distill, student: {config: {}, source: x}}", "exactly one of"),
    ("{kind: distill, student: {config: {}}, loss: cosine, losses: {mse: 1}}", "either loss or losses"),
    ("{kind: distill, student: {config: {}}, loss: kl}", "'kl' is not one of"),
])
def test_distill_config_rejects_invalid_recipes(tiny_bert, tiny_texts, stage, error):
    with pytest.raises(RecipeError, match=error):
        _recipe(tiny_bert, tiny_texts, stage)


@pytest.mark.parametrize("student, losses", [
    ("{from_teacher: {layers: [0, 2]}}", "{cosine: 1.0}"),
    ("{from_teacher: {layers: [1]}}", "{mse: 1.0, attention: 0.5}"),
    ("{from_teacher: {layers: [0, 2], ffn: 0.5}}", "{cosine: 1.0, similarity: 1.0}"),
    ("{config: {num_hidden_layers: 1, intermediate_size: 32}}", "{cosine: 1.0, hidden-mse: 1.0}"),
])
def test_distill_writes_loadable_student(tmp_path, tiny3, tiny_texts, student, losses):
    from compress.tasks import sentence_embedding as task

    stage = f"{{kind: distill, student: {student}, losses: {losses}, max_steps: 3, batch_size: 16}}"

    (artifact,), ctx = _run(tmp_path, _recipe(tiny3, tiny_texts, stage))

    assert artifact.name == "student" and artifact.metadata["role"] == "student"
    m = ctx.metrics
    assert m["steps"] == 3 and m["student_params"] < m["teacher_params"] and np.isfinite(m["final_loss"])
    assert {"cosine", "top10_agreement"} <= set(m["quality_before"]) and m["quality_after"]["step"] == 3
    assert m["samples_per_s"] > 0 and artifact.metadata["params"] == m["student_params"]
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json", "model.safetensors"):
        assert (artifact.path / name).is_file(), name
    config = json.loads((artifact.path / "config.json").read_text())
    assert not config.get("output_hidden_states") and not config.get("output_attentions")
    model = task.load_model(artifact.path)
    assert sum(p.numel() for p in model.parameters()) == m["student_params"]
    # Embeddings copied from the teacher stay frozen by default; a random-init student learns its own.
    frozen = "from_teacher" in student
    words = "embeddings.word_embeddings.weight"
    assert frozen == bool((_state(artifact.path)[words] == _state(tiny3)[words]).all())


def test_distill_trains_in_the_precision_asked(tmp_path, tiny3, tiny_texts):
    stage = ("{{kind: distill, student: {{from_teacher: {{layers: [0, 2]}}}}, max_steps: 3, batch_size: 16, "
             "losses: {{cosine: 1.0, hidden-mse: 0.5, attention: 0.5}}, precision: {}}}")
    states = {}
    for precision in ("fp32", "bf16"):
        (artifact,), ctx = _run(tmp_path / precision, _recipe(tiny3, tiny_texts, stage.format(precision)))
        assert ctx.metrics["precision"] == precision and np.isfinite(ctx.metrics["final_loss"])
        states[precision] = _state(artifact.path)

    # bf16 autocast really ran (other weights), and the saved model is fp32 either way.
    name = "encoder.layer.0.attention.self.query.weight"
    assert not (states["fp32"][name] == states["bf16"][name]).all()
    assert {str(v.dtype) for v in states["bf16"].values()} == {"torch.float32"}


def test_distill_narrow_student_learns_hidden_states_through_projection(tmp_path, tiny3, tiny_texts):
    from compress.errors import StageError

    student = "{config: {hidden_size: 16, num_hidden_layers: 1, intermediate_size: 32}}"
    stage = f"{{kind: distill, student: {student}, losses: {{hidden-mse: 1.0}}, max_steps: 2, batch_size: 16}}"

    _, ctx = _run(tmp_path / "ok", _recipe(tiny3, tiny_texts, stage))

    assert ctx.metrics["steps"] == 2 and np.isfinite(ctx.metrics["final_loss"])
    no_bridge = stage.replace("hidden-mse", "cosine").replace("student: {config", "student: {projection: none, config")
    with pytest.raises(StageError, match="width 16 differs"):
        _run(tmp_path / "bad", _recipe(tiny3, tiny_texts, no_bridge))


def test_distill_classifier_with_logit_kd_and_labels(tmp_path, tiny_cls, tiny_texts):
    from compress.tasks import text_classification as task

    stage = "{kind: distill, student: {from_teacher: {layers: [0, 2]}}, max_steps: 2, batch_size: 16}"
    recipe = _recipe(tiny_cls, tiny_texts, stage, task="text-classification", labels=True)

    (artifact,), ctx = _run(tmp_path, recipe)

    assert ctx.metrics["losses"] == {"logit-kd": 1.0}
    assert {"accuracy", "macro_f1", "agreement"} <= set(ctx.metrics["quality_after"])
    logits = task.load_model(artifact.path)(*_ids(artifact.path))
    assert tuple(logits.shape) == (2, 2)


@pytest.mark.parametrize("task, labels", [("text-classification", True), ("sentence-embedding", False)])
def test_distill_learns_from_unlabeled_texts_too(tmp_path, tiny_cls, tiny3, tiny_texts, task, labels):
    extra = tmp_path / "more.txt"
    extra.write_text("".join(f"an unlabelled line number {i} about a film\n" for i in range(48)))
    stage = "{kind: distill, student: {from_teacher: {layers: [0, 2]}}, epochs: 1, batch_size: 16}"
    model = tiny_cls if labels else tiny3
    plain = _recipe(model, tiny_texts, stage, task=task, labels=labels)
    recipe = _recipe(model, tiny_texts, stage, task=task, labels=labels, more=f"unlabeled: {{source: '{extra}'}}")

    _, base = _run(tmp_path / "plain", plain)
    _, more = _run(tmp_path / "more", recipe)

    # 100 training rows (120 - 20 held out) in 7 batches of 16; + 48 unlabelled texts: 10 batches.
    assert base.metrics["steps"] == 7 and more.metrics["steps"] == 10
    assert more.metrics["unlabeled_texts"] == 48 and np.isfinite(more.metrics["final_loss"])
    assert more.metrics["quality_after"].keys() == base.metrics["quality_after"].keys()


def _ids(path):
    import torch

    from compress.tasks.common import load_tokenizer, tokenize

    batch = tokenize(load_tokenizer(path), ["a good film", "a dull one"], 16)
    return torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])


def test_distill_resumes_after_interrupt_with_identical_weights(tmp_path, tiny3, tiny_texts, monkeypatch):
    stage = ("{kind: distill, student: {from_teacher: {layers: [0, 2]}}, max_steps: 6, batch_size: 16, "
             "checkpoint_every: 2, eval_every: 0}")
    recipe = _recipe(tiny3, tiny_texts, stage)
    (straight,), _ = _run(tmp_path / "straight", recipe)
    original = training._save_checkpoint

    def save_then_die(path, job, optimizer, state):
        original(path, job, optimizer, state)
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "broken", recipe)
    monkeypatch.setattr(training, "_save_checkpoint", original)

    (resumed,), ctx = _run(tmp_path / "broken", recipe)

    assert ctx.metrics["resumed_from_step"] == 2 and ctx.metrics["steps"] == 6
    assert ctx.metrics["targets_cached"] is True
    a, b = _state(straight.path), _state(resumed.path)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_distill_continues_from_checkpoint_when_max_steps_grows(tmp_path, tiny3, tiny_texts):
    stage = "{{kind: distill, student: {{from_teacher: {{layers: [0]}}}}, max_steps: {}, batch_size: 16}}"
    _run(tmp_path, _recipe(tiny3, tiny_texts, stage.format(3)))

    _, ctx = _run(tmp_path, _recipe(tiny3, tiny_texts, stage.format(5)))

    assert ctx.metrics["resumed_from_step"] == 3 and ctx.metrics["steps"] == 5


def test_distill_picks_latest_teacher_role(tmp_path, tiny3, tiny_bert, tiny_texts):
    stage = "{kind: distill, student: {from_teacher: {layers: [0]}}, max_steps: 1, batch_size: 16}"
    recipe = _recipe(tiny3, tiny_texts, stage)

    (artifact,), ctx = _run(tmp_path, recipe, teachers={"teacher": tiny3, "teacher-finetuned": tiny_bert})

    assert artifact.metadata["teacher"] == "teacher-finetuned"
    assert ctx.metrics["teacher_params"] != ctx.metrics["student_params"]


@pytest.mark.parametrize("reference, outputs, labels, expected", [
    ([[2, 0], [0, 2], [2, 0], [0, 2]], [[2, 0], [0, 2], [2, 0], [0, 2]], [0, 1, 0, 1],
     {"accuracy": 1.0, "macro_f1": 1.0, "agreement": 1.0, "chance_accuracy": 0.5}),
    ([[2, 0], [0, 2], [2, 0], [0, 2]], [[2, 0], [2, 0], [2, 0], [2, 0]], [0, 1, 0, 1],
     {"accuracy": 0.5, "macro_f1": (2 / 3 + 0) / 2, "agreement": 0.5, "chance_accuracy": 0.5}),
    ([[2, 0], [2, 0], [0, 2], [0, 2]], [[2, 0], [0, 2], [0, 2], [0, 2]], None,
     {"accuracy": 0.75, "macro_f1": (2 / 3 + 0.8) / 2, "agreement": 0.75}),
])
def test_text_classification_quality_scores_predictions(reference, outputs, labels, expected):
    from compress.tasks import text_classification as task

    got = task.quality(np.array(reference, float), np.array(outputs, float), labels)

    assert got == pytest.approx(expected)


@pytest.mark.slow
def test_distill_real_minilm_improves_on_dropped_layers(tmp_path, real_model_dir):
    stage = "{kind: distill, student: {from_teacher: {layers: [0, 2, 5]}}, max_steps: 40, eval_every: 0}"
    text = (f"version: 1\nname: t\ntask: sentence-embedding\nteacher: {{source: '{REAL_MODEL}'}}\n"
            f"data: {{source: '{REAL_DATA}', text_field: text, eval_size: 150, train_limit: 1280}}\n"
            f"stages:\n  - {stage}\n")
    recipe = parse_recipe(text)

    _, ctx = _run(tmp_path, recipe, teachers={"teacher": real_model_dir})

    before, after = ctx.metrics["quality_before"]["cosine"], ctx.metrics["quality_after"]["cosine"]
    assert after > before + 0.02, (before, after)
    assert ctx.metrics["student_params"] < 0.8 * ctx.metrics["teacher_params"]
