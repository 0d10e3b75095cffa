"""Accuracy-aware quantization: grouping, durations, and the search on a tiny BERT with one fragile layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_bert
from pydantic import ValidationError
from rich.console import Console

from compress import report, runner, sensitivity
from compress.recipe import parse_recipe
from compress.stages import quantize

FRAGILE = "/model/encoder/layer.1/output/dense/MatMul"


@pytest.mark.parametrize("nodes, granularity, expected", [
    (["/model/encoder/layer.0/attention/output/dense/MatMul", "Attention_0", "Attention_1",
      "/model/encoder/layer.1/output/dense/MatMul", "/model/embeddings/word_embeddings/Gather", "/pooler/MatMul"],
     "layer", {"layer.0": ["/model/encoder/layer.0/attention/output/dense/MatMul", "Attention_0"],
               "layer.1": ["Attention_1", "/model/encoder/layer.1/output/dense/MatMul"],
               "embeddings": ["/model/embeddings/word_embeddings/Gather"], "other": ["/pooler/MatMul"]}),
    (["/model/layers.12/mlp/MatMul", "/model/layers.2/mlp/MatMul"], "layer",
     {"layer.12": ["/model/layers.12/mlp/MatMul"], "layer.2": ["/model/layers.2/mlp/MatMul"]}),
    (["a", "b"], "node", {"a": ["a"], "b": ["b"]}),
])
def test_sensitivity_group_nodes_by_layer_or_node(nodes, granularity, expected):
    assert sensitivity.group_nodes(nodes, granularity) == expected


@pytest.mark.parametrize("value, seconds", [(90, 90.0), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0),
                                            ("1m30s", 90.0), ("2.5m", 150.0), ("soon", None), ("", None)])
def test_quantize_accuracy_time_budget_accepts_durations(value, seconds):
    if seconds is None:
        with pytest.raises(ValidationError, match="not a duration"):
            quantize.AccuracyOptions(max_quality_drop=0.01, time_budget=value)
    else:
        assert quantize.AccuracyOptions(max_quality_drop=0.01, time_budget=value).time_budget == seconds


@pytest.fixture(scope="module")
def fragile(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-layer tiny BERT whose layer 1 feeds its FFN output MatMul one huge activation (unused in fp32) and
    matters (weights x50): per-tensor dynamic activation scales wipe out that MatMul's other inputs in int8."""
    import torch
    from transformers import BertModel

    root = tmp_path_factory.mktemp("fragile")
    model_dir = make_tiny_bert(root / "tiny", layers=3)
    model = BertModel.from_pretrained(model_dir)
    with torch.no_grad():
        layer = model.encoder.layer[1]
        layer.intermediate.dense.bias[0] = 300.0
        layer.output.dense.weight[:, 0] = 0.0
        layer.output.dense.weight *= 50.0
    model.save_pretrained(model_dir)
    words = ["good", "bad", "great", "awful", "fine", "boring", "brilliant", "dull", "moving", "flat"]
    data = root / "texts.csv"
    data.write_text("text\n" + "\n".join(f"the movie was {' '.join(words[(i * 7 + j * 3) % 10] for j in range(3 + i % 5))}"
                                         for i in range(80)) + "\n")
    exported = root / "exported"
    runner.run(_recipe(model_dir, data, "int8-dynamic", "null"), exported, console=Console(stderr=True, quiet=True))
    return model_dir, data, exported


def _recipe(model_dir: Path, data: Path, scheme: str, accuracy: str):
    return parse_recipe(f"""
version: 1
name: fragile
task: sentence-embedding
teacher: {{source: {model_dir}}}
data: {{source: {data}, eval_size: 32, max_length: 32}}
stages:
  - kind: export
    optimize: false
    parity_texts: 4
  - kind: quantize
    schemes: [{scheme}]
    int8: {{calibration_size: 16}}
    accuracy: {accuracy}
""")


def _run(fragile, tmp_path, scheme: str, accuracy: str):
    """The recipe run in a copy of a run whose export is done (the runner finds it cached)."""
    import shutil

    model_dir, data, exported = fragile
    shutil.copytree(exported, tmp_path / "run")
    recipe = _recipe(model_dir, data, scheme, accuracy)
    return runner.run(recipe, tmp_path / "run", console=Console(stderr=True, quiet=True))


@pytest.mark.parametrize("granularity, kept", [("layer", ["layer.1"]), ("node", [FRAGILE])])
def test_accuracy_search_keeps_exactly_the_fragile_layer_in_fp32(fragile, tmp_path, granularity, kept):
    manifest = _run(fragile, tmp_path, "int8-dynamic",
                    f"{{max_quality_drop: 0.01, time_budget: 2m, granularity: {granularity}}}")

    acc = manifest["stages"]["quantize"]["metrics"]["teacher.int8-dynamic.onnx"]["accuracy"]
    assert acc["steps"][0]["drop"] > 0.05  # the fragile layer costs much at int8
    assert acc["sensitivity"][0]["group"] == kept[0] and acc["sensitivity"][1]["drop"] < 0.01
    assert acc["excluded_groups"] == kept and FRAGILE in acc["excluded_nodes"]
    assert acc["within_budget"] and acc["drop"] <= 0.01 and acc["reason"] == "within budget"
    assert [s["step"] for s in acc["steps"]] == [0, 1] and all(s["latency_ms"] > 0 for s in acc["steps"])
    bundle = tmp_path / "run" / manifest["artifacts"]["teacher.int8-dynamic.onnx"]["path"]
    assert json.loads((bundle / "compress.json").read_text())["excluded_nodes"] == acc["excluded_nodes"]
    assert manifest["artifacts"]["teacher.int8-dynamic.onnx"]["metadata"]["excluded_nodes"] == acc["excluded_nodes"]
    tables = tmp_path / "run" / manifest["artifacts"]["teacher.int8-dynamic.accuracy"]["path"]
    assert json.loads((tables / "sensitivity.json").read_text())[0]["group"] == kept[0]
    assert kept[0] in (tables / "sensitivity.md").read_text()
    text = "\n".join(report.accuracy_lines(report.accuracy_searches(manifest), "cosine"))
    assert f"`{FRAGILE}`" in text and "| 1 (kept) |" in text


def test_accuracy_search_out_of_time_keeps_its_best_so_far(fragile, tmp_path):
    manifest = _run(fragile, tmp_path, "int8-dynamic", "{max_quality_drop: 0.01, time_budget: 0.01}")

    acc = manifest["stages"]["quantize"]["metrics"]["teacher.int8-dynamic.onnx"]["accuracy"]
    assert acc["reason"].startswith("time budget spent") and not acc["within_budget"]
    assert acc["best_step"] == 0 and acc["excluded_nodes"] == []
    assert (tmp_path / "run" / "artifacts" / "teacher.int8-dynamic.onnx" / "model.onnx").is_file()
    log = json.loads((tmp_path / "run" / "work" / "quantize" / "teacher.int8-dynamic.onnx.search.json").read_text())
    assert log["status"] == "done" and log["steps"][0]["drop"] == acc["drop"]


def test_accuracy_search_keeps_int4_nodes_in_8_bits(fragile, tmp_path):
    import onnx
    import onnxruntime as ort

    manifest = _run(fragile, tmp_path, "int4-weight", "{max_quality_drop: 0.0, time_budget: 2m}")

    acc = manifest["stages"]["quantize"]["metrics"]["teacher.int4-weight.onnx"]["accuracy"]
    assert acc["kept_precision"] == "int8" and acc["excluded_nodes"]
    assert acc["drop"] < acc["steps"][0]["drop"]
    path = tmp_path / "run" / "artifacts" / "teacher.int4-weight.onnx" / "model.onnx"
    bits = {a.i for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "bits"}
    assert bits == {4, 8}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.array([[101, 2204, 102]], dtype=np.int64)
    assert np.isfinite(session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]).all()


@pytest.mark.parametrize("nodes, expected", [
    (["/features/features.0/features.0.0/Conv", "/features/features.1/depthwise/depthwise.0/Conv",
      "/features/features.1/pointwise/pointwise.0/Conv", "/head/Gemm"],
     {"features.0": 1, "features.1": 2, "other": 1}),
    (["/encoder/layer.0/attention/MatMul", "/encoder/layer.1/output/MatMul", "/pooler/dense/MatMul"],
     {"layer.0": 1, "layer.1": 1, "other": 1}),
])
def test_group_nodes_groups_a_cnn_by_block(nodes, expected):
    from compress.sensitivity import group_nodes

    assert {k: len(v) for k, v in group_nodes(nodes, "layer").items()} == expected
