"""Students of another width and tokenizer (issue 21): a tiny MPNet teacher (48 wide, its own word-level
tokenizer) taught to a tiny BERT student (32 wide, MiniLM's WordPiece tokenizer) through a learned projection
exported inside the ONNX graph, or through PCA-reduced targets; the refusals of impossible pairings; the
machine-wide teacher-output cache; the Dense head's storage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_MODEL, make_tiny_bert
from rich.console import Console

from compress import runner, teacher_cache
from compress.errors import StageError
from compress.recipe import parse_recipe
from compress.sources import package_path
from compress.stages import distill

WORDS = ("the movie was good bad great awful fine boring brilliant dull moving flat").split()


def make_tiny_mpnet(dest: Path, hidden: int = 48) -> Path:
    """A random MPNet (relative attention bias, like all-mpnet-base-v2) with its own word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                            sep_token="</s>", pad_token="<pad>", unk_token="<unk>").save_pretrained(dest)
    torch.manual_seed(1)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=hidden * 2, max_position_embeddings=130, pad_token_id=1)
    MPNetModel(config).save_pretrained(dest)
    real = package_path(REAL_MODEL)
    shutil.copy2(real / "modules.json", dest / "modules.json")
    shutil.copytree(real / "1_Pooling", dest / "1_Pooling")
    (dest / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny test mpnet\n")
    return dest


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-student"), layers=2, hidden=32)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


BENCH = "  - {kind: bench, batch_sizes: [1], seq_lens: [16], threads: [1], rounds: 1, warmup: 1, min_iterations: 2, " \
        "min_seconds: 0}\n"


def recipe(teacher: Path, student: Path, data: Path, projection: str, extra: str = "", name: str = "pair"):
    text = (f"version: 1\nname: {name}\ntask: sentence-embedding\nteacher: {{source: '{teacher}'}}\n"
            f"data: {{source: '{data}', text_field: text, eval_size: 20, max_length: 32}}\n"
            f"stages:\n  - kind: distill\n    student: {{source: '{student}', projection: {projection}}}\n"
            f"    max_steps: 4\n    eval_every: 0\n    batch_size: 16\n{extra}")
    return parse_recipe(text)


def run(recipe_, run_dir: Path) -> dict:
    return runner.run(recipe_, run_dir, console=Console(stderr=True, quiet=True))


def test_distill_linear_projection_exports_inside_graph_and_benches(tmp_path, teacher, student, tiny_texts):
    extra = "  - {kind: export, parity_texts: 8}\n" + BENCH
    manifest = run(recipe(teacher, student, tiny_texts, "linear", extra), tmp_path / "run")

    artifacts = tmp_path / "run" / "artifacts"
    info = json.loads((artifacts / "student.onnx" / "compress.json").read_text())
    export = manifest["stages"]["export"]["metrics"]["student.onnx"]
    assert (info["projection"], info["index_compatible"]) == ("linear", True)
    assert export["parity_max_abs"] < 1e-3
    assert _onnx_width(artifacts / "student.onnx") == 48 == _onnx_width(artifacts / "teacher.onnx")
    assert manifest["stages"]["distill"]["metrics"]["index_compatible"] is True
    rows = _bench_rows(tmp_path / "run")
    assert "cosine" in rows["student.onnx"]["quality"] and "cosine" in rows["teacher.onnx"]["quality"]


def test_distill_pca_student_keeps_its_width_and_says_index_must_be_rebuilt(tmp_path, teacher, student, tiny_texts):
    manifest = run(recipe(teacher, student, tiny_texts, "pca", "  - {kind: export, parity_texts: 8}\n"),
                   tmp_path / "run")

    saved = tmp_path / "run" / "artifacts" / "student"
    metrics = manifest["stages"]["distill"]["metrics"]
    info = json.loads((tmp_path / "run" / "artifacts" / "student.onnx" / "compress.json").read_text())
    assert (saved / "pca.npz").is_file() and not (saved / "2_Dense").exists()
    assert (metrics["projection"], metrics["index_compatible"]) == ("pca", False)
    assert "rebuilt" in info["index_note"]
    assert _onnx_width(tmp_path / "run" / "artifacts" / "student.onnx") == 32


@pytest.mark.parametrize("case, error", [
    ("classifier-labels", "the student classifies into"),
    ("width-no-projection", "set student.projection: linear"),
    ("feature-loss-tokenizer", "compares token positions"),
    ("pca-wider-student", "use projection: linear"),
])
def test_distill_pairing_refuses_impossible_pairings_in_one_sentence(tmp_path, teacher, student, tiny_texts, case,
                                                                      error):
    if case == "classifier-labels":
        from compress.tasks import text_classification as task

        cls_teacher = make_tiny_bert(tmp_path / "t", num_labels=2)
        cls_student = make_tiny_bert(tmp_path / "s", num_labels=3)
        act = lambda: distill.build_student(distill.StudentSpec(source=str(cls_student)), task, cls_teacher,  # noqa: E731
                                            task.load_backbone(cls_teacher), False)
    else:
        projection, extra, pair = {"width-no-projection": ("none", "", (teacher, student)),
                                   "feature-loss-tokenizer": ("linear", "    losses: {cosine: 1, hidden-mse: 1}\n",
                                                              (teacher, student)),
                                   "pca-wider-student": ("pca", "", (student, teacher))}[case]
        act = lambda: run(recipe(*pair, tiny_texts, projection, extra), tmp_path / "run")  # noqa: E731

    with pytest.raises(StageError) as raised:
        act()

    assert error in str(raised.value) and "\n" not in str(raised.value)


def test_teacher_cache_reuses_outputs_across_recipes(tmp_path, teacher, student, tiny_texts, cache):
    first = run(recipe(teacher, student, tiny_texts, "linear", name="one"), tmp_path / "one")
    other = recipe(teacher, student, tiny_texts, "pca", name="two")  # another recipe, same teacher and texts

    second = run(other, tmp_path / "two")

    assert first["stages"]["distill"]["metrics"]["targets_cached"] is False
    assert second["stages"]["distill"]["metrics"]["targets_cached"] is True
    assert len(list((cache / "teacher-outputs").glob("*.npy"))) == 2  # train and eval


@pytest.mark.parametrize("texts, other, same", [
    (["a", "b"], ["a", "b"], True),
    (["a", "b"], ["b", "a"], False),
    (["ab"], ["a", "b"], False),
])
def test_teacher_cache_key_depends_on_texts_in_order(texts, other, same):
    assert (teacher_cache.key("t", "x", 32, texts) == teacher_cache.key("t", "x", 32, other)) is same


def test_teacher_cache_ignores_corrupt_file(tmp_path):
    teacher_cache.save("k" * 64, np.ones((3, 4)), tmp_path)
    teacher_cache.path_for("k" * 64, tmp_path).write_bytes(b"not npy")

    assert teacher_cache.load("k" * 64, 3, tmp_path) is None


def _cache_file(folder, name: str, mb: float, age: int):
    import os

    path = folder / name
    path.write_bytes(b"x" * int(mb * 1024 * 1024))
    os.utime(path, (1_000_000 + age, 1_000_000 + age))
    return path


@pytest.mark.parametrize("limit_mb, survivors", [
    (10, {"new", "mid", "old", "user"}),  # fits: nothing removed
    (2.5, {"new", "mid", "user"}),        # the oldest goes first
    (0, {"new", "user"}),                 # never the one just written, never a file it did not name
])
def test_teacher_cache_evicts_least_recently_used_own_files(tmp_path, limit_mb, survivors):
    names = {"old": "a" * 32 + ".npy", "mid": "b" * 32 + ".npy", "new": "c" * 32 + ".npy", "user": "notes.npy"}
    files = {k: _cache_file(tmp_path, n, 1, age) for (k, n), age in zip(names.items(), (0, 1, 2, -5))}

    teacher_cache.evict(tmp_path, int(limit_mb * 1024 * 1024), keep=files["new"])

    assert {k for k, f in files.items() if f.exists()} == survivors


def test_teacher_cache_load_marks_a_file_recently_used(tmp_path):
    import os

    first = teacher_cache.save("a" * 64, np.ones((2, 2)), tmp_path)
    second = teacher_cache.save("b" * 64, np.ones((2, 2)), tmp_path)
    os.utime(first, (1_000_000, 1_000_000))
    os.utime(second, (2_000_000, 2_000_000))
    assert teacher_cache.load("a" * 64, 2, tmp_path) is not None  # now the most recently used

    teacher_cache.evict(first.parent, first.stat().st_size)

    assert first.exists() and not second.exists()


def test_teacher_cache_save_keeps_the_folder_under_its_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE_MAX_MB", "0.0001")  # about 100 bytes: one small file
    first = teacher_cache.save("a" * 64, np.ones((2, 2)), tmp_path)
    second = teacher_cache.save("b" * 64, np.ones((2, 2)), tmp_path)

    assert second.exists() and not first.exists()


def test_embedding_head_dense_round_trips_before_normalize(tmp_path, student):
    import torch

    from compress.tasks import embedding_head
    from compress.tasks import sentence_embedding as task

    folder = tmp_path / "m"
    shutil.copytree(student, folder)
    layer = embedding_head.new_linear(32, 48, seed=3)

    embedding_head.write_dense(folder, layer)
    model = task.load_model(folder)

    kinds = [m["type"].rsplit(".", 1)[-1] for m in embedding_head.modules(folder)]
    ids = torch.tensor([[101, 2023, 102]])
    assert kinds == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert torch.equal(model.head[0].weight, layer.weight)  # read back by the task's own loader
    assert model(ids, torch.ones_like(ids)).shape == (1, 48)


@pytest.mark.parametrize("keep_float, kept", [(None, 3), ([], 0), (["layer.1/output"], 1)])
def test_quantize_int8_dynamic_keeps_mpnet_feed_forward_outliers_in_float(tmp_path, teacher, tiny_texts, keep_float, kept):
    import onnx

    text = (f"version: 1\nname: q\ntask: sentence-embedding\nteacher: {{source: '{teacher}'}}\n"
            f"data: {{source: '{tiny_texts}', text_field: text, eval_size: 20, max_length: 32}}\n"
            "stages:\n  - {kind: export, parity_texts: 8}\n"
            f"  - {{kind: quantize, schemes: [int8-dynamic], int8: {{keep_float: {json.dumps(keep_float)}}}}}\n")

    manifest = run(parse_recipe(text), tmp_path / "run")

    options = manifest["stages"]["quantize"]["metrics"]["teacher.int8-dynamic.onnx"]["options"]
    model = onnx.load(str(tmp_path / "run" / "artifacts" / "teacher.int8-dynamic.onnx" / "model.onnx"))
    float_names = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert len(options.get("kept_float", [])) == kept
    assert set(options.get("kept_float", [])) <= float_names


def _onnx_width(bundle: Path) -> int:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    from compress.tasks.common import load_tokenizer, tokenize

    feeds = tokenize(load_tokenizer(bundle), ["the movie was good"], 16)
    return session.run(None, feeds)[0].shape[1]


def _bench_rows(run_dir: Path) -> dict:
    folder = run_dir / "artifacts" / "bench"
    data = json.loads((folder / "results.json").read_text())
    return {r["variant"]: r for r in data["rows"] if r["status"] == "ok"}


@pytest.mark.parametrize("noise, min_cosine", [(0.0, 0.999), (0.05, 0.95)])
def test_embedding_head_fit_linear_recovers_a_linear_map(noise, min_cosine):
    from compress.tasks import embedding_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = rng.normal(size=(12, 8))
    targets = x @ truth.T + noise * rng.normal(size=(400, 12))
    layer = embedding_head.new_linear(8, 12)

    fit = embedding_head.fit_linear(layer, x, targets)

    assert fit >= min_cosine
    assert np.allclose(layer.weight.detach().numpy(), truth, atol=0.05 + 2 * noise)
