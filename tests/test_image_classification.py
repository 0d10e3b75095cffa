"""Task image-classification: Python factories as model sources, image data, and the whole pipeline on a CNN."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from compress import runner
from compress import teacher as teacher_source
from compress.artifacts import TMP_PREFIX
from compress.errors import SourceError, StageError
from compress.recipe import DataConfig, parse_recipe
from compress.tasks import factory
from compress.tasks.image_data import load_images

# A user's own models, in a file of their own: pixel_values [N, 1, 8, 8] -> logits [N, 10].
FACTORY = """\
from torch import nn


def teacher():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def student():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


def not_a_model():
    return 42
"""

PIPELINE = """\
version: 1
name: my-cnn
task: image-classification
teacher: {{source: 'python:{factory}:teacher', license: mit}}
data: {{source: sklearn:digits, eval_size: 100, train_limit: 400}}
stages:
  - {{kind: finetune, max_steps: 40, batch_size: 32, lr: 3.0e-3, eval_every: 0}}
  - kind: distill
    student: {{source: 'python:{factory}:student'}}
    max_steps: 60
    batch_size: 32
    lr: 1.0e-2
    eval_every: 0
  - {{kind: export, models: [student]}}
  - {{kind: quantize, schemes: [int8-dynamic, int8-static], int8: {{calibration_size: 32}}}}
  - {{kind: bench, rounds: 1, warmup: 1, min_iterations: 3, min_seconds: 0}}
"""


@pytest.fixture()
def factory_file(tmp_path) -> Path:
    path = tmp_path / "user_models" / "my_cnn.py"
    path.parent.mkdir()
    path.write_text(FACTORY)
    return path


def quiet():
    return Console(stderr=True, quiet=True)


# ---------------------------------------------------------------- the pipeline (the acceptance test)


def test_user_factory_cnn_goes_through_distill_export_int8_and_bench(tmp_path, factory_file):
    from compress import report

    recipe = parse_recipe(PIPELINE.format(factory=factory_file))

    manifest = runner.run(recipe, tmp_path / "run", console=quiet())
    result = report.write_reports(tmp_path / "run", manifest)

    stages = manifest["stages"]
    # Far above chance (0.1) after a few dozen steps: the teacher from a random init, the student from it.
    assert stages["finetune"]["metrics"]["quality_after"]["accuracy"] > 0.5
    assert stages["distill"]["metrics"]["quality_after"]["accuracy"] > 0.3
    assert stages["export"]["metrics"]["student.onnx"]["parity_max_abs"] < 1e-4
    bundle = tmp_path / "run" / "artifacts" / "student.onnx"
    info = json.loads((bundle / "compress.json").read_text())
    assert info["inputs"] == ["pixel_values"] and info["labels"] == [str(n) for n in range(10)]
    assert info["preprocessing"]["scale"].startswith("pixels / 255")  # what the device app must do, written down
    rows = {r["variant"]: r for r in result["rows"] if r["status"] == "ok"}
    assert set(rows) == {"teacher", "student.onnx", "student.int8-dynamic.onnx", "student.int8-static.onnx"}
    for name, row in rows.items():
        assert 0.3 < row["headline"] <= 1.0, (name, row)  # accuracy on the 100 held-out digits
        assert row["p50_ms"] > 0
    assert result["headline"] == "accuracy"
    assert "student.int8-static.onnx" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("data, expected", [
    ({}, {"mean": None, "std": None, "normalise": "none", "image_size": None}),
    ({"mean": [0.5, 0.4, 0.3], "std": 0.25, "image_size": 32},
     {"mean": [0.5, 0.4, 0.3], "std": 0.25, "normalise": "(x - mean) / std per channel", "image_size": 32}),
])
def test_image_preprocessing_records_the_recipes_normalisation(data, expected):
    from types import SimpleNamespace

    from compress.tasks import image_classification

    cfg = SimpleNamespace(**{"mean": None, "std": None, "image_size": None, "image_fit": "resize", **data})

    info = image_classification.preprocessing(cfg)

    assert {k: info[k] for k in expected} == expected and info["image_fit"] == "resize"


# ---------------------------------------------------------------- factories and model folders


def test_factory_folder_round_trips_the_model(tmp_path, factory_file):
    import torch

    folder = factory.materialize(f"python:{factory_file}:student", tmp_path / "student")
    model = factory.load(folder)
    again = factory.build(f"python:{factory_file}:student")
    again.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 8, 8)

    assert (folder / "factory.py").read_text() == FACTORY
    assert factory.read_spec(folder)["factory"] == "python:factory.py:student"
    assert torch.equal(model(x), again.eval()(x))


def test_factory_materialize_is_seeded_and_leaves_an_unchanged_folder_alone(tmp_path, factory_file):
    first = factory.materialize(f"python:{factory_file}:teacher", tmp_path / "teacher")
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    factory.materialize(f"python:{factory_file}:teacher", tmp_path / "teacher")

    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_factory_accepts_a_module_on_the_python_path(tmp_path, factory_file, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))

    model = factory.build("python:my_cnn:student")

    assert type(model).__name__ == "Sequential"


@pytest.mark.parametrize("source, error", [
    ("python:my_cnn", "expected python:<module>:<function>"),
    ("python:{file}:missing", "has no function 'missing'"),
    ("python:{file}:not_a_model", "returned a int, not a torch.nn.Module"),
    ("python:{dir}/nothing.py:teacher", "no such file"),
    ("python:no_such_module_here:teacher", "cannot import module"),
])
def test_factory_names_what_is_wrong(factory_file, source, error):
    with pytest.raises(SourceError, match=error):
        factory.build(source.format(file=factory_file, dir=factory_file.parent))


def test_factory_folder_runs_its_code_only_when_trusted(tmp_path, factory_file):
    folder = factory.materialize(f"python:{factory_file}:student", tmp_path / "checkpoint")

    with pytest.raises(SourceError, match="trust_remote_code"):
        factory.resolve(str(folder), tmp_path / "unused")
    assert factory.resolve(str(folder), tmp_path / "unused", trust_remote_code=True) == folder.resolve()


def test_factory_pickle_state_dict_needs_allow_pickle_and_loads_weights_only(tmp_path, factory_file):
    import torch

    from compress.sources import check_model_folder

    folder = factory.materialize(f"python:{factory_file}:student", tmp_path / "checkpoint")
    weights = factory.load(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "model.pt")

    with pytest.raises(SourceError, match="allow_pickle"):
        check_model_folder(folder)
    check_model_folder(folder, allow_pickle=True)
    loaded = factory.load(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())


def test_factory_folder_refuses_weights_of_another_model(tmp_path, factory_file):
    import shutil

    teacher = factory.materialize(f"python:{factory_file}:teacher", tmp_path / "teacher")
    student = factory.materialize(f"python:{factory_file}:student", tmp_path / "student")
    shutil.copy2(teacher / "model.safetensors", student / "model.safetensors")

    with pytest.raises(SourceError, match="do not fit the model"):
        factory.load(student)


@pytest.mark.parametrize("student, error", [
    ({"from_teacher": {"layers": [0]}}, "student.from_teacher builds a transformer"),
    ({"config": {"hidden_size": 8}}, "student.config builds a transformer"),
])
def test_image_student_must_come_from_a_factory(tmp_path, student, error):
    from compress.stages.distill import StudentSpec
    from compress.tasks import image_classification as task

    with pytest.raises(StageError, match=error):
        task.build_student(StudentSpec(**student), None, tmp_path)


# ---------------------------------------------------------------- data


def _png(path: Path, size: tuple[int, int], mode: str = "L", value: int = 255) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_images_from_class_folders_are_grey_scaled_and_split_with_seed(tmp_path):
    for i in range(6):
        _png(tmp_path / "imgs" / ("cat" if i % 2 else "dog") / f"{i}.png", (5, 4), value=51 * (i % 2 + 1))

    data = load_images(DataConfig(source=str(tmp_path / "imgs"), eval_size=2, seed=1))
    again = load_images(DataConfig(source=str(tmp_path / "imgs"), eval_size=2, seed=1))

    assert data.label_names == ["cat", "dog"]
    assert data.train.images.shape == (4, 1, 4, 5) and data.train.images.dtype == np.float32
    assert data.eval.labels == again.eval.labels and len(data.eval.labels) == 2
    cat = data.train.images[[i for i, y in enumerate(data.train.labels) if y == 0][0]]
    assert np.allclose(cat, 102 / 255)


def test_images_of_mixed_sizes_need_image_size_and_rgb_makes_three_channels(tmp_path):
    _png(tmp_path / "imgs" / "a" / "0.png", (8, 8))
    _png(tmp_path / "imgs" / "b" / "1.jpg", (6, 10), mode="RGB")
    _png(tmp_path / "imgs" / "b" / "2.png", (8, 8))

    with pytest.raises(SourceError, match="set data.image_size"):
        load_images(DataConfig(source=str(tmp_path / "imgs"), eval_size=1))
    data = load_images(DataConfig(source=str(tmp_path / "imgs"), eval_size=1, image_size=[4, 6]))

    assert data.train.images.shape == (2, 3, 4, 6)


def test_images_from_npz_channels_last_uint8_with_string_labels(tmp_path):
    images = np.zeros((10, 6, 6, 3), dtype=np.uint8)
    images[:5] = 255
    labels = np.array(["yes"] * 5 + ["no"] * 5)
    np.savez(tmp_path / "d.npz", x=images, y=labels)

    data = load_images(DataConfig(source=str(tmp_path / "d.npz"), eval_size=4, labels=["yes", "no"]))

    assert data.label_names == ["yes", "no"]
    assert data.train.images.shape == (6, 3, 6, 6)
    assert all(float(img.max()) == (1.0 if y == 0 else 0.0) for img, y in zip(data.train.images, data.train.labels))


@pytest.mark.parametrize("arrays, error", [
    ({"pictures": np.zeros((4, 8, 8)), "labels": np.zeros(4)}, "expected arrays images"),
    ({"images": np.zeros((4, 8, 8)), "labels": np.zeros(3)}, "4 images but labels"),
    ({"images": np.zeros((4, 8)), "labels": np.zeros(4)}, "expected \\[N, H, W\\]"),
    ({"images": np.array([None] * 4, dtype=object), "labels": np.zeros(4)}, "without pickle"),
])
def test_images_from_npz_name_what_is_wrong(tmp_path, arrays, error):
    np.savez(tmp_path / "d.npz", **arrays)

    with pytest.raises(SourceError, match=error):
        load_images(DataConfig(source=str(tmp_path / "d.npz"), eval_size=1))


def test_images_sklearn_digits_keep_listed_classes_in_their_order():
    data = load_images(DataConfig(source="sklearn:digits", eval_size=50, labels=["7", "1"]))

    assert data.label_names == ["7", "1"]
    assert data.train.images.shape[1:] == (1, 8, 8) and 0.0 <= data.train.images.min() < data.train.images.max() <= 1
    assert len(data.train.labels) + 50 == 361  # 179 sevens and 182 ones
    assert set(data.train.labels) == {0, 1}


def test_image_inputs_batch_in_order_and_feed_by_name():
    from compress.tasks import image_classification as task

    images = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    hook = task.inputs(None)

    batches = hook.batches(images, None, 2)
    lengths, collate = hook.training(images)

    assert [b["_index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert np.array_equal(np.concatenate([b["pixel_values"] for b in batches]), images)
    assert lengths == [1] * 5 and collate([4, 0])["pixel_values"].shape == (2, 1, 8, 8)
    assert list(hook.encode([images[0], images[1]])) == list(task.INPUT_NAMES)


def test_image_task_metric_is_top1_accuracy_and_agreement():
    from compress.tasks import image_classification as task

    teacher = np.eye(3)[[0, 1, 2, 2]]
    student = np.eye(3)[[0, 1, 1, 2]]

    scores = task.quality(teacher, student, np.array([0, 1, 2, 0]))

    assert task.HEADLINE == "accuracy"
    assert scores["accuracy"] == 0.5 and scores["agreement"] == 0.75


def test_runner_builds_a_python_teacher_into_the_run_dir(tmp_path, factory_file):
    recipe = parse_recipe(PIPELINE.format(factory=factory_file).split("stages:")[0]
                          + "stages:\n  - {kind: export}\n")

    artifact = teacher_source.resolve(recipe, tmp_path / "run")

    assert artifact.path == tmp_path / "run" / "artifacts" / "teacher"
    assert artifact.metadata["weights"] == "safetensors" and os.path.isfile(artifact.path / "factory.py")


def test_runner_data_hash_follows_the_images_of_a_folder(tmp_path, factory_file):
    _png(tmp_path / "imgs" / "a" / "0.png", (8, 8), value=10)
    _png(tmp_path / "imgs" / "b" / "1.png", (8, 8), value=20)
    recipe = parse_recipe(PIPELINE.format(factory=factory_file).replace("sklearn:digits", str(tmp_path / "imgs")))
    before = runner.data_hash(recipe)

    _png(tmp_path / "imgs" / "b" / "1.png", (8, 8), value=30)

    assert runner.data_hash(recipe) != before
