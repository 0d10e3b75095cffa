"""Static-embedding students (compress/static.py): a tiny BERT's model2vec table, saved in model2vec's format,
exported as an ONNX bundle that onnxruntime runs alone and that matches model2vec's own encode; the regression;
the schema; the whole chain distill -> export -> quantize through the runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_tiny_bert, make_tiny_texts

from compress import static
from compress.recipe import dump_recipe, parse_recipe
from compress.stages import distill

TEXTS = ["the movie was good", "an awful, boring film!", "Brilliant acting but a dull plot", "x",
         "naïve café résumé", "[CLS] literal special tokens [SEP]", "emoji 🙂 and numbers 12345"]


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A tiny BERT's static student in model2vec's format (the model2vec distill: about 20 s on 2 loaded cores)."""
    from compress.tasks import sentence_embedding as task

    teacher = make_tiny_bert(tmp_path_factory.mktemp("teacher"))
    table = static.distill_table(task.load_backbone(teacher), teacher, pca_dims=8, sif_coefficient=1e-4)
    folder = tmp_path_factory.mktemp("static") / "student"
    static.save(folder, table, teacher, {"teacher": "tiny", "pca_dims": 8})
    return folder


def test_static_bundle_matches_model2vec_encode(student, tmp_path):
    import onnxruntime as ort
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    bundle = tmp_path / "bundle"
    static.write_bundle(student, bundle, opset=17)
    # onnxruntime and tokenizers alone, the bundle's own tokenizer with its special tokens, padded batch
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0)
    encoded = tokenizer.encode_batch(TEXTS)
    feed = {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    embedding, rows = session.run(["embedding", "last_hidden_state"], feed)
    expected = StaticModel.from_pretrained(str(student)).encode(TEXTS)
    assert embedding.shape == expected.shape == (len(TEXTS), 8)
    assert np.max(np.abs(embedding - expected)) < 1e-5
    # the token rows: a client that mean-pools over the mask and normalises gets the same embedding
    pooled = rows.sum(1) / feed["attention_mask"].sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert np.max(np.abs(pooled - expected)) < 1e-5


def test_static_model2vec_format_loads_with_staticmodel(student):
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(str(student))
    vectors = model.encode(["the movie was good", "awful"])
    assert model.dim == 8 and model.normalize
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert json.loads((student / "config.json").read_text())["model_type"] == "model2vec"
    assert static.is_static(student) and not static.is_static(student / static.TOKENIZER_DIR)


def test_static_table_zeroes_special_tokens(student):
    from transformers import AutoTokenizer

    table = static.load_table(student)
    tokenizer = AutoTokenizer.from_pretrained(str(student / static.TOKENIZER_DIR))
    assert table.shape == (len(tokenizer), 8)
    assert not np.any(table[tokenizer.all_special_ids])
    assert np.abs(table[tokenizer.convert_tokens_to_ids(["movie", "good", "##s"])]).sum(1).min() > 0


@pytest.mark.slow  # a second pass over the tiny BERT's 30,522 tokens
def test_static_vocab_subset_is_model2vecs_table_when_every_id_is_kept(student, tmp_path):
    from compress.tasks import sentence_embedding as task

    teacher = make_tiny_bert(tmp_path / "teacher")  # the fixture's teacher: same seed, same weights
    table = static.distill_table(task.load_backbone(teacher), teacher, pca_dims=8, sif_coefficient=1e-4,
                                 keep=list(range(len(static.load_table(student)))))
    assert np.array_equal(table, static.load_table(student))


def test_static_vocab_subset_gives_rows_to_the_kept_tokens_only(tmp_path):
    from transformers import AutoTokenizer

    from compress.tasks import sentence_embedding as task

    teacher = make_tiny_bert(tmp_path / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    ids = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    keep = static.frequent_ids(ids + [tokenizer.all_special_ids], 20)

    table = static.distill_table(task.load_backbone(teacher), teacher, pca_dims=8, sif_coefficient=1e-4, keep=keep)

    rows = set(np.flatnonzero(static.content_mask(table)).tolist())
    assert rows == set(keep) - set(tokenizer.all_special_ids) and len(rows) >= 15
    assert table.shape == (len(tokenizer), 8)


@pytest.mark.parametrize("ids, count, expected", [
    ([[5, 3, 5], [3, 5, 9]], 2, [5, 3]),
    ([[7, 2], [2, 7]], 1, [2]),  # a tie: the lower id first
    ([[1]], 5, [1]),
])
def test_static_frequent_ids_ranks_by_count(ids, count, expected):
    assert static.frequent_ids(ids, count) == expected


def test_static_regression_fits_targets_and_folds_the_head():
    import torch

    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 4)).astype(np.float32)
    table[0] = 0.0  # a special token
    ids = rng.integers(1, 50, size=(200, 6))
    truth = (rng.normal(size=(50, 4)) @ rng.normal(size=(4, 12))).astype(np.float32)  # reachable from 4 dims
    targets = truth[ids].mean(1)

    def collate(index):
        return {"input_ids": torch.from_numpy(np.concatenate([np.zeros((len(index), 1), int), ids[index]], 1)),
                "attention_mask": torch.ones(len(index), 7, dtype=torch.long)}

    start, _ = static.regress(table, collate, 200, targets, epochs=0.02, lr=1e-2, batch_size=50, budget_s=None,
                              seed=0)  # one step: about the least-squares head
    folded, info = static.regress(table, collate, 200, targets, epochs=40, lr=1e-2, batch_size=50, budget_s=None,
                                  seed=0)
    before, after = (_cosine(static.encode(t, ids, np.ones_like(ids)), targets) for t in (start, folded))
    assert folded.shape == (50, 12) and not folded[0].any()
    assert info["steps"] == 160 and after > before + 0.1, (before, after)


def _cosine(a, b):
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, 1)))


@pytest.mark.parametrize("spec", [
    {"static": {}},
    {"static": {"pca_dims": 64, "sif_coefficient": None, "regression": None}},
    {"static": {"pca_dims": None, "regression": {"epochs": 2, "lr": 0.01, "batch_size": 64}}},
])
def test_static_spec_round_trips_through_yaml(spec):
    config = distill.Config.model_validate({"kind": "distill", "student": spec})
    again = distill.Config.model_validate(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
    assert again == config and again.student.static is not None


@pytest.mark.parametrize("spec, message", [
    ({"static": {}, "from_teacher": {"layers": [0]}}, "exactly one of"),
    ({"static": {"pca_dims": 1}}, "greater than or equal to 2"),
    ({"static": {"vocab_size": 10}}, "Extra inputs are not permitted"),
    ({"static": {}, "vocab": {"trim": True}}, "takes no vocab or projection"),
])
def test_static_spec_rejects_bad_config(spec, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        distill.Config.model_validate({"kind": "distill", "student": spec})


def test_static_student_runs_distill_export_quantize(tmp_path):
    from compress.runner import run

    teacher, data = make_tiny_bert(tmp_path / "teacher"), make_tiny_texts(tmp_path / "texts.csv")
    recipe = parse_recipe(
        f"version: 1\nname: st\ntask: sentence-embedding\nteacher: {{source: '{teacher}', license: apache-2.0}}\n"
        f"data: {{source: '{data}', text_field: text, eval_size: 20, max_length: 32}}\n"
        "stages:\n  - {kind: distill, student: {static: {pca_dims: 8, regression: {epochs: 2, batch_size: 32}}}}\n"
        "  - {kind: export, models: [student-static]}\n"
        "  - {kind: quantize, models: [student-static.onnx], schemes: [int8-dynamic, int8-static, int4-weight]}\n")
    assert parse_recipe(dump_recipe(recipe)) == recipe
    run(recipe, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    artifacts = {a["name"]: a for a in manifest["artifacts"]} if isinstance(manifest["artifacts"], list) else \
        manifest["artifacts"]
    assert artifacts["student-static"]["metadata"]["role"] == "student"
    for name in ("student-static.onnx", "student-static.int8-dynamic.onnx", "student-static.int8-static.onnx",
                 "student-static.int4-weight.onnx"):
        assert artifacts[name]["metadata"]["role"] == "student", name
    export = json.dumps(manifest)
    assert '"parity_reference": "model2vec StaticModel.encode"' in export
    info = json.loads((tmp_path / "run" / "artifacts" / "student-static.onnx" / "compress.json").read_text())
    assert [o["name"] for o in info["outputs"]] == ["embedding", "last_hidden_state"]
    assert info["outputs"][0]["shape"] == ["batch", 32]  # regression: the teacher's width
