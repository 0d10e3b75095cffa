"""int8-static for CNNs (compress/quant_cnn.py, issue 34 part 3): cross-layer equalization is exact in fp32 and
evens the channels out; the stage equalizes a CNN whose channel gains differ by 1000x, tries the calibration
choices and reports them; unequalized, the mixed-precision search (compress/quant_mixed.py) keeps the crushed
activation in float and names it."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from compress import quant_cnn, runner
from compress.report import build, markdown
from compress.recipe import parse_recipe


def _graph(middle: list[str], second: str, extra_consumer: bool = False):
    """x -> Conv(1->4, channel 0's gain 1000x) -> middle ops -> second conv (depthwise or 1x1) -> y."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    w1[0] *= 1000
    b1 = rng.normal(size=4).astype(np.float32)
    w2 = (rng.normal(size=(4, 1, 3, 3)) if second == "depthwise" else rng.normal(size=(6, 4, 1, 1))).astype(
        np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1],
                                                                                  np.int64), "pads")]
    nodes, tensor = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="first")], "c1"
    for i, op in enumerate(middle):
        inputs = [tensor, "pads"] if op == "Pad" else [tensor]
        nodes.append(helper.make_node(op, inputs, [f"m{i}"], name=f"mid{i}"))
        tensor = f"m{i}"
    group = 4 if second == "depthwise" else 1
    nodes.append(helper.make_node("Conv", [tensor, "w2"], ["y"], name="second", group=group))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_consumer:  # the middle tensor also leaves the graph: rescaling it would change that output
        outputs.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


@pytest.mark.parametrize("middle, second, extra_consumer, pairs", [
    (["Relu"], "depthwise", False, 1),
    (["Relu", "Pad"], "pointwise", False, 1),
    (["Relu"], "pointwise", True, 0),       # the activation is also a graph output: left alone
    (["Sigmoid"], "depthwise", False, 0),   # not positively homogeneous: left alone
])
def test_equalize_evens_channel_ranges_and_keeps_the_outputs(middle, second, extra_consumer, pairs):
    model = _graph(middle, second, extra_consumer)
    x = np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)
    before = _run(model, x)

    done = quant_cnn.equalize(model)

    after = _run(model, x)
    assert done["pairs"] == pairs
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    if pairs:
        assert done["weight_range_spread_before"] > 100 > done["weight_range_spread_after"], done


WIDE = """
import torch
from torch import nn
from torch.nn import functional as F


class Wide(nn.Module):
    # The stem's channel 0 has 1000x the gain of the others, and the depthwise conv after it 1/1000x: the
    # same function, but int8's one scale for the activation between them crushes channels 1-7.
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, 2, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, 2, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.head = nn.Linear(16, 10, bias=False)
        gain = torch.ones(8, 1, 1, 1)
        gain[0] = 1000.0
        self.register_buffer("gain", gain)

    def forward(self, pixel_values):
        x = F.conv2d(F.pad(pixel_values, [0, 1, 0, 1]), self.stem.weight * self.gain, stride=2)
        x = F.conv2d(F.pad(F.relu(x), [0, 1, 0, 1]), self.dw.weight / self.gain, stride=2, groups=8)
        return self.head(F.relu(self.pw(F.relu(x))).mean(dim=(2, 3)))


def wide():
    torch.manual_seed(0)
    return Wide()
"""


@pytest.mark.parametrize("int8, equalized, tried, agreement_at_least, agreement_below, kept", [
    ("{calibration_size: 32}", True, 6, 0.95, None, None),          # equalized, 3 methods x per-channel on and off
    ("{calibration_size: 32, calibration_search: [minmax]}", True, 2, 0.95, None, None),
    ("{calibration_size: 32, equalize: false, calibration_search: [], mixed: {target: 0}}", False, 0, 0.0, 0.5,
     0),                                                                                       # the weakness
    ("{calibration_size: 32, equalize: false, calibration_search: []}", False, 0, 0.9, None, 1),  # mixed mends it
])
def test_quantize_cnn_int8_static_equalizes_and_reports_the_calibration_choices(
        tmp_path, int8, equalized, tried, agreement_at_least, agreement_below, kept):
    factory = tmp_path / "wide.py"
    factory.write_text(WIDE)
    recipe = parse_recipe(f"""
version: 1
name: wide-cnn
task: image-classification
teacher: {{source: 'python:{factory}:wide', license: mit}}
data: {{source: sklearn:digits, image_size: 16, eval_size: 100, train_limit: 200}}
stages:
  - {{kind: finetune, max_steps: 80, batch_size: 32, lr: 2.0e-2, eval_every: 0}}
  - {{kind: export, models: [teacher-finetuned]}}
  - {{kind: quantize, schemes: [int8-static], check_size: 100, int8: {int8}}}
""")

    manifest = runner.run(recipe, tmp_path / "run", console=Console(stderr=True, quiet=True))

    metrics = manifest["stages"]["quantize"]["metrics"]["teacher-finetuned.int8-static.onnx"]
    cnn, agreement = metrics["options"]["cnn"], metrics["check"]["agreement"]
    if equalized:
        assert cnn["equalization"]["pairs"] == 2 and cnn["equalization"]["weight_range_spread_after"] < 10, cnn
    else:
        assert cnn["equalization"] == "off"
    assert len(cnn.get("tried", [])) == tried
    if tried:
        assert cnn["chosen"]["agreement"] == max(r["agreement"] for r in cnn["tried"])
        assert metrics["options"]["calibration"] == cnn["chosen"]["calibration"]
    assert agreement >= agreement_at_least and (agreement_below is None or agreement < agreement_below), metrics
    report = "\n".join(markdown.int8_choice_lines(build.int8_choices(manifest)))
    assert "## int8-static calibration (convolutional model)" in report
    assert ("weight-range ratio" in report) == equalized and report.count("| per-") == tried
    mixed = cnn["mixed"]
    if kept is not None:  # kept: the fewest candidates the search must keep in float
        assert len(mixed["kept_float"]) >= kept and (kept == 0) == (not mixed["kept_float"]), mixed
    if mixed["kept_float"]:
        assert mixed["agreement"] > mixed["int8_agreement"], mixed
        assert f"kept in float (mixed precision): {len(mixed['kept_float'])}" in report
        assert all(f"  - {name}" in report for name in mixed["kept_float"])
