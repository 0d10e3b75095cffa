"""compress/quant_tools.py and compress/quant_check.py: pre-processing, fp16 that stays valid, artifact checks,
quiet logs; on the tiny MobileNet-style CNN with TF "same" padding of recipes/edge_cnn.py."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from compress import quant_check, quant_tools

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    """recipes/edge_cnn.py:tiny (seeded) exported as the export stage does: legacy exporter, opset 17."""
    import torch

    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import edge_cnn
    finally:
        sys.path.remove(str(ROOT / "recipes"))
    torch.manual_seed(0)
    model = edge_cnn.tiny().eval()
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.rand(2, 1, 16, 16),), str(path), input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


def feeds(n: int = 40) -> list[dict]:
    images = np.random.default_rng(0).random((n, 1, 16, 16), dtype=np.float32)
    return [{"pixel_values": images[i:i + 16]} for i in range(0, n, 16)]


def test_to_fp16_keeps_valid_a_graph_the_plain_converter_leaves_unsorted(cnn, tmp_path):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    broken = convert_float_to_float16(onnx.load(str(cnn)), keep_io_types=True)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(broken)

    model, done = quant_tools.to_fp16(onnx.load(str(cnn)))
    onnx.save(model, str(tmp_path / "model.onnx"))
    check = quant_check.verify(tmp_path / "model.onnx", cnn, feeds(), "fp16")

    assert done["resorted"] and done["keep_io_types"] and done["fp32_shape_nodes"] > 0
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert check["checker"] == "ok" and check["examples"] == 40 and check["agreement"] >= 0.99
    assert check["speedup_b1"] > 0


@pytest.mark.parametrize("broken, reason", [
    ("reversed", "fp16 conversion produced an unsorted graph"),
    ("nan", "fp16 conversion produced a model whose outputs hold"),
    ("garbage", "fp16 conversion produced an invalid model"),
])
def test_verify_fails_with_the_true_reason(cnn, tmp_path, broken, reason):
    import onnx
    from onnx import helper

    model = onnx.load(str(cnn))
    path = tmp_path / "model.onnx"
    if broken == "reversed":
        nodes = list(model.graph.node)[::-1]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    elif broken == "nan":  # logits * NaN
        out = model.graph.output[0].name
        model.graph.node[-1].output[0] = "raw"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
        model.graph.node.append(helper.make_node("Mul", ["raw", "nan"], [out]))
        onnx.save(model, str(path))
    else:
        path.write_bytes(b"not a model")

    with pytest.raises(quant_check.ArtifactCheckError, match=reason):
        quant_check.verify(path, cnn, feeds(), "fp16")


@pytest.mark.parametrize("order, changed", [([0, 1, 2], False), ([2, 1, 0], True), ([1, 0, 2], True)])
def test_sort_topologically_orders_producers_first(order, changed):
    from onnx import TensorProto, helper

    chain = [helper.make_node("Relu", ["x"], ["a"], name="n0"), helper.make_node("Relu", ["a"], ["b"], name="n1"),
             helper.make_node("Relu", ["b"], ["y"], name="n2")]
    graph = helper.make_graph([chain[i] for i in order], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])

    assert quant_tools.sort_topologically(graph) is changed
    assert [n.name for n in graph.node] == ["n0", "n1", "n2"]


def test_preprocess_runs_on_a_cnn_and_says_why_it_failed_elsewhere(cnn, tmp_path):
    assert quant_tools.preprocess(cnn, tmp_path / "pre.onnx") is None
    assert (tmp_path / "pre.onnx").exists()

    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    reason = quant_tools.preprocess(tmp_path / "bad.onnx", tmp_path / "bad.pre.onnx")

    assert reason and "\n" not in reason and not (tmp_path / "bad.pre.onnx").exists()


def test_conv_dominated_tells_a_cnn_from_a_dense_model(cnn, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((64, 64), np.float32), "w")
    dense = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight]))
    onnx.save(dense, str(tmp_path / "dense.onnx"))

    assert quant_tools.conv_dominated(cnn)
    assert not quant_tools.conv_dominated(tmp_path / "dense.onnx")


def test_captured_keeps_logging_warnings_prints_and_native_writes_off_the_console(tmp_path, capfd):
    import warnings

    log = tmp_path / "work" / "quantize.log"
    with quant_tools.captured(log, "model int8-static") as said:
        print("node {\n  op_type: \"Slice\"\n}")
        logging.getLogger().warning("Please consider to run pre-processing before quantization")
        warnings.warn("a DeprecationWarning from onnx", DeprecationWarning, stacklevel=1)
        os.write(2, b"[W:onnxruntime] native warning\n")
    out, err = capfd.readouterr()

    text = log.read_text()
    assert out == "" and err == ""
    assert said["lines"] >= 5 and text.startswith("--- model int8-static")
    assert "op_type" in text and "pre-processing" in text and "DeprecationWarning" in text and "native" in text


def test_summary_line_points_to_the_log_only_when_it_has_warnings(tmp_path):
    check = {"checker": "ok", "examples": 360, "agreement": 0.9944}
    quiet = quant_check.summary_line("m.int8-static.onnx", 420_000, 0.27, check, 0, tmp_path / "q.log", tmp_path)
    noisy = quant_check.summary_line("m.int8-static.onnx", 420_000, 0.27, check, 7,
                                     tmp_path / "work" / "q.log", tmp_path)

    slow = quant_check.summary_line("m.fp16.onnx", 420_000, 0.5, {**check, "speedup_b1": 0.7}, 0, None, tmp_path)

    assert quiet == "  m.int8-static.onnx: 0.4 MB (27% of fp32), agreement 0.9944 with fp32 on 360 held-out"
    assert slow.endswith("0.70x fp32's speed at batch 1 (slower: see the bench)")
    assert noisy.endswith("7 warning line(s) in work/q.log")


def recipe_notes_for(task: str, schemes: str, providers: str) -> list[str]:
    from compress.recipe import parse_recipe

    image = task == "image-classification"
    return quant_tools.recipe_notes(parse_recipe(f"""
version: 1
name: n
task: {task}
teacher: {{source: {"'python:m.py:f'" if image else "some/folder"}}}
data: {"{source: sklearn:digits}" if image else "{source: texts.csv, text_field: text}"}
stages:
  - {{kind: export}}
  - {{kind: quantize, schemes: {schemes}}}
  - {{kind: bench, providers: {providers}}}
"""))


@pytest.mark.parametrize("task, schemes, providers, expected", [
    ("image-classification", "[int8-dynamic, int8-static]", "[cpu]", "ConvInteger"),
    ("image-classification", "[int8-static, fp16]", "[cpu]", None),
    ("text-classification", "[int8-dynamic]", "[cpu]", None),
    ("sentence-embedding", "[int8-dynamic, fp16]", "[cpu, cuda]", "on the CUDA provider"),
    ("sentence-embedding", "[int8-dynamic]", "[{CUDAExecutionProvider: {device_id: 0}}]", "on the CUDA provider"),
    ("sentence-embedding", "[fp16, int8-static]", "[cuda]", None),
])
def test_recipe_notes_say_where_int8_dynamic_is_slow(task, schemes, providers, expected):
    notes = recipe_notes_for(task, schemes, providers)

    assert len(notes) == (expected is not None)
    assert expected is None or (notes[0].startswith("stages[1]: int8-dynamic") and expected in notes[0])


def _graph_of(ops: list[tuple[str, str]], opset: int = 17, subgraph: tuple[str, str] | None = None):
    """A model whose nodes are `ops` ((domain, op_type), chained on one float tensor); `subgraph` puts one more
    node inside an If's branch."""
    from onnx import TensorProto, helper

    nodes, name = [], "x"
    for index, (domain, op) in enumerate(ops):
        nodes.append(helper.make_node(op, [name], [f"t{index}"], domain=domain, name=f"n{index}"))
        name = f"t{index}"
    if subgraph:
        branch = helper.make_graph([helper.make_node(subgraph[1], [name], ["b"], domain=subgraph[0])], "branch", [],
                                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("ops, subgraph, domains, standard, only", [
    ([("", "Relu"), ("ai.onnx", "MatMulInteger")], None, {"ai.onnx": ["MatMulInteger", "Relu"]}, True, []),
    ([("", "Relu"), ("com.microsoft", "Attention")], None,
     {"ai.onnx": ["Relu"], "com.microsoft": ["Attention"]}, False, []),
    ([("com.microsoft", "QAttention"), ("com.microsoft", "MatMulNBits")], None,
     {"com.microsoft": ["MatMulNBits", "QAttention"]}, False, ["com.microsoft.QAttention"]),
    ([("", "Relu")], ("com.microsoft", "QEmbedLayerNormalization"),
     {"ai.onnx": ["If", "Relu"], "com.microsoft": ["QEmbedLayerNormalization"]}, False,
     ["com.microsoft.QEmbedLayerNormalization"]),
], ids=["standard", "fused-fp32", "quantized-fused", "in-a-subgraph"])
def test_runtimes_follow_op_domains(ops, subgraph, domains, standard, only):
    model = _graph_of(ops, subgraph=subgraph)

    found = quant_tools.runtimes(model)

    assert quant_tools.op_domains(model) == domains
    assert found["standard_onnx"] is standard and found["onnxruntime_only"] == only


@pytest.mark.parametrize("op, opset, moved", [
    ("ReduceL2", 21, 1), ("ReduceMean", 18, 1), ("ReduceL2", 17, 0), ("ReduceSum", 13, 1), ("Relu", 21, 0),
])
def test_reduce_axes_as_inputs_follows_the_opset(op, opset, moved):
    import onnx
    from onnx import helper

    model = _graph_of([("", "Relu")], opset=opset)
    model.graph.node[0].op_type = op
    if op != "Relu":
        model.graph.node[0].attribute.append(helper.make_attribute("axes", [0]))
        model.graph.node[0].attribute.append(helper.make_attribute("keepdims", 1))

    assert quant_tools.reduce_axes_as_inputs(model) == moved

    node = model.graph.node[0]
    assert len(node.input) == 1 + moved
    assert any(a.name == "axes" for a in node.attribute) == (op != "Relu" and not moved)
    if moved:
        onnx.checker.check_model(model, full_check=True)
