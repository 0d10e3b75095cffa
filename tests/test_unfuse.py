"""compress/unfuse.py: onnxruntime's fused transformer operators rewritten as standard ONNX, same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_models import export_tiny_bert

from compress.unfuse import FUSED, UnfuseError, unfuse

TEXTS = ["the movie was good", "a brilliant and moving film, if a little long and a bit loud", "dull"]


def _fuse(folder: Path, approximate_gelu: bool) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_gelu_approximation = approximate_gelu
    fused = optimize_model(str(folder / "model.onnx"), model_type="bert", num_heads=2, hidden_size=32,
                           optimization_options=options)
    path = folder / f"fused{int(approximate_gelu)}.onnx"
    fused.save_model_to_file(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return export_tiny_bert(tmp_path_factory.mktemp("unfuse") / "bert")


def _feed(folder: Path, names: list[str]) -> dict:
    from compress.tasks.common import load_tokenizer, tokenize

    feed = tokenize(load_tokenizer(folder), TEXTS, 32)  # padded: the attention mask matters
    feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return {k: v for k, v in feed.items() if k in names}


@pytest.mark.parametrize("approximate_gelu, op_types, left", [
    (False, FUSED, set()),
    (True, FUSED, set()),
    (False, ("EmbedLayerNormalization", "Attention"), {"SkipLayerNormalization", "BiasGelu"}),
], ids=["all", "fast-gelu", "embeddings-and-attention"])
def test_unfuse_computes_what_the_fused_graph_does(tiny, approximate_gelu, op_types, left):
    import onnx
    import onnxruntime as ort

    fused_path = _fuse(tiny, approximate_gelu)
    fused = onnx.load(str(fused_path))
    gelu = "FastGelu" if approximate_gelu else "BiasGelu"
    assert {"EmbedLayerNormalization", "Attention", gelu} <= {n.op_type for n in fused.graph.node if n.domain}

    plain = unfuse(fused, op_types)

    onnx.checker.check_model(plain, full_check=True)
    assert {n.op_type for n in plain.graph.node if n.domain} == left
    assert not any("qkv" in i.name for i in plain.graph.initializer)  # the packed weights are gone
    names = [i.name for i in plain.graph.input]
    feed = _feed(tiny, names)
    want = ort.InferenceSession(str(fused_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=2e-5)


def _attention_model(opset: int, unidirectional: int):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((4, 12), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(12, np.float32), "b")
    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2,
                            unidirectional=unidirectional)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("opset, unidirectional, message", [
    (16, 0, "opset 16"),
    (17, 1, "causal mask"),
])
def test_unfuse_refuses_what_it_cannot_rewrite(opset, unidirectional, message):
    with pytest.raises(UnfuseError, match=message):
        unfuse(_attention_model(opset, unidirectional))


@pytest.mark.parametrize("real", [32, 20, 1], ids=["no-padding", "padded", "one-token"])
def test_unfuse_gives_padded_keys_a_score_softmax_runs_fast_on(tiny, real):
    # onnxruntime's Softmax is ~9x slower on rows with logits > ~84 below the max (the old -10000 filler).
    import onnx
    import onnxruntime as ort

    from compress.unfuse import MASKED_SCORE

    plain = unfuse(onnx.load(str(_fuse(tiny, False))))
    logits = [n.input[0] for n in plain.graph.node if n.op_type == "Softmax"]
    plain.graph.output.extend(onnx.ValueInfoProto(name=name) for name in logits)
    feed = _feed(tiny, [i.name for i in plain.graph.input])
    feed = {k: v[:1] for k, v in feed.items()}
    feed["attention_mask"][:, real:] = 0

    got = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]).run(logits, feed)

    for scores in got:  # (1, heads, 32, 32)
        assert (scores[..., real:] == MASKED_SCORE).all()
        assert (scores.max(-1) - scores.min(-1)).max() < 84
