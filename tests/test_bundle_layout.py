"""The layout of exported bundles: what the clients people deploy with look for (issue 28), in every variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from compress import runner
from compress.recipe import parse_recipe

MAX_LENGTH = 64  # not the tokenizer's 128 nor its 512: every file must carry the recipe's
TEXTS = ["a quiet, moving film", "the plot makes no sense at all, and then it goes on for another hour", "great"]
VARIANTS = ["teacher.onnx", "teacher.fp16.onnx", "teacher.int8-dynamic.onnx"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_bert) -> Path:
    from conftest import make_tiny_texts

    root = tmp_path_factory.mktemp("layout")
    texts = make_tiny_texts(root / "texts.csv")
    recipe = parse_recipe(
        f"version: 1\nname: layout\ntask: sentence-embedding\nteacher: {{source: {tiny_bert}}}\n"
        f"data: {{source: {texts}, eval_size: 10, max_length: {MAX_LENGTH}}}\n"
        "stages:\n  - {kind: export, parity_texts: 4}\n  - {kind: quantize, schemes: [int8-dynamic, fp16]}\n"
    )
    runner.run(recipe, root / "run", console=Console(quiet=True))
    return root / "run" / "artifacts"


def _run(bundle: Path, texts: list[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    encoded = Tokenizer.from_file(str(bundle / "tokenizer.json")).encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
    session = ort.InferenceSession(str(bundle / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {"attention_mask": feeds["attention_mask"], **dict(zip(names, session.run(None, feeds)))}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundle_outputs_last_hidden_state_in_float32(artifacts, variant):
    out = _run(artifacts / variant, TEXTS)

    assert list(out)[1:] == ["embedding", "last_hidden_state"]  # the embedding stays first: parity and bench read it
    states, mask = out["last_hidden_state"], out["attention_mask"]
    assert states.dtype == np.float32
    assert states.shape == (*mask.shape, out["embedding"].shape[1])


@pytest.mark.parametrize(("variant", "atol"), [
    ("teacher.onnx", 1e-5),
    ("teacher.int8-dynamic.onnx", 1e-5),  # the same tensor the in-graph pooling reads, pooled the same way
    ("teacher.fp16.onnx", 2e-3),  # the graph pools in float16; the output is cast to float32 before it
])
def test_bundle_pooled_states_reproduce_the_embedding(artifacts, variant, atol):
    out = _run(artifacts / variant, TEXTS)

    mask = out["attention_mask"][..., None].astype(np.float32)
    pooled = (out["last_hidden_state"] * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, out["embedding"], atol=atol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundle_max_length_agrees_in_every_config_file(artifacts, variant):
    bundle = artifacts / variant

    lengths = {
        "compress.json": _json(bundle / "compress.json")["max_length"],
        "tokenizer.json": _json(bundle / "tokenizer.json")["truncation"]["max_length"],
        "tokenizer_config.json": _json(bundle / "tokenizer_config.json")["model_max_length"],
        "sentence_bert_config.json": _json(bundle / "sentence_bert_config.json")["max_seq_length"],
    }
    assert set(lengths.values()) == {MAX_LENGTH}, lengths


@pytest.mark.parametrize(("texts", "width"), [
    (["great"], 3),  # [CLS] great [SEP]: not padded to a fixed length
    (["great", "a quiet, moving film"], 7),  # padded to the longest of the batch
    (["word " * 200], MAX_LENGTH),  # truncated at the bundle's max length
])
def test_bundle_tokenizer_pads_to_the_longest_text(artifacts, texts, width):
    from tokenizers import Tokenizer

    encoded = Tokenizer.from_file(str(artifacts / "teacher.int8-dynamic.onnx" / "tokenizer.json")).encode_batch(texts)

    assert {len(e.ids) for e in encoded} == {width}


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundle_compress_json_describes_the_graph(artifacts, variant):
    import onnxruntime as ort

    bundle = artifacts / variant
    info = _json(bundle / "compress.json")
    session = ort.InferenceSession(str(bundle / info["model"]), providers=["CPUExecutionProvider"])

    listed = {o["name"]: o for o in info["outputs"]}
    assert list(listed) == [o.name for o in session.get_outputs()] == ["embedding", "last_hidden_state"]
    assert listed["embedding"]["dtype"] == listed["last_hidden_state"]["dtype"] == "float32"
    assert listed["embedding"]["shape"] == ["batch", 32]
    assert listed["last_hidden_state"]["shape"] == ["batch", "sequence", 32]
    assert "do not pool" in listed["embedding"]["meaning"]
    assert (info["pooling"], info["normalized"], info["output"]) == ("mean", True, "embedding")


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundle_graph_is_where_clients_look(artifacts, variant):
    from compress.artifacts import model_file
    from compress.stages.bench_engine import size_mb

    bundle = artifacts / variant
    graph = bundle / "onnx" / "model.onnx"

    assert graph.is_file() and not graph.is_symlink()
    assert model_file(bundle) == graph
    # transformers.js picks onnx/model<suffix>.onnx by dtype (a browser's default is q8): fp32 names our one file
    assert _json(bundle / "config.json")["transformers.js_config"]["dtype"] == "fp32"
    assert (bundle / "model.onnx").resolve() == graph.resolve()  # the old place still reads (a link, no copy)
    assert size_mb(bundle, "onnxruntime") == pytest.approx(graph.stat().st_size / 1e6)


@pytest.mark.parametrize(("files", "expected"), [
    (["onnx/model.onnx"], "onnx/model.onnx"),
    (["model.onnx"], "model.onnx"),  # a run dir from before the onnx/ layout
    (["model.onnx", "onnx/model.onnx"], "onnx/model.onnx"),
])
def test_model_file_finds_both_layouts(tmp_path, files, expected):
    from compress.artifacts import model_file

    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")

    assert model_file(tmp_path) == tmp_path / expected


def test_arrange_bundle_moves_the_graph_and_its_data(tmp_path):
    from compress.artifacts import arrange_bundle

    for name in ("model.onnx", "model.onnx.data", "tokenizer.json"):
        (tmp_path / name).write_text(name)

    assert arrange_bundle(tmp_path) is True
    assert arrange_bundle(tmp_path) is False  # already arranged: nothing moves
    assert (tmp_path / "onnx" / "model.onnx.data").read_text() == "model.onnx.data"
    assert (tmp_path / "model.onnx").is_symlink() and (tmp_path / "model.onnx").read_text() == "model.onnx"
    assert not (tmp_path / "onnx" / "tokenizer.json").exists()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from conftest import make_tiny_bert, make_tiny_texts

    root = tmp_path_factory.mktemp("layout-classifier")
    bert, texts = make_tiny_bert(root / "bert", num_labels=2), make_tiny_texts(root / "texts.csv")
    recipe = parse_recipe(
        f"version: 1\nname: classifier\ntask: text-classification\nteacher: {{source: {bert}}}\n"
        f"data: {{source: {texts}, label_field: category, eval_size: 10, max_length: {MAX_LENGTH}}}\n"
        "stages:\n  - {kind: export, parity_texts: 4}\n"
    )
    runner.run(recipe, root / "run", console=Console(quiet=True))
    return root / "run" / "artifacts" / "teacher.onnx"


@pytest.mark.parametrize(("file", "key", "expected"), [
    ("compress.json", "outputs", [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]),
    ("compress.json", "model", "onnx/model.onnx"),
    ("tokenizer_config.json", "model_max_length", MAX_LENGTH),
    ("config.json", "transformers.js_config", {"dtype": "fp32"}),
])
def test_bundle_classifier_keeps_logits_where_optimum_looks(classifier, file, key, expected):
    value = _json(classifier / file)[key]

    if key == "outputs":  # Optimum's ORTModelForSequenceClassification reads the output named logits
        value = [{k: v for k, v in o.items() if k != "meaning"} for o in value]
    assert value == expected
