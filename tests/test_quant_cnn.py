"""int8-static for CNNs (compress/quant_cnn.py, issue 34 part 3): cross-layer equalization is exact in fp32 and
evens the channels out; the stage equalizes a CNN whose channel gains differ by 1000x, tries the calibration
choices and reports them; unequalized, the mixed-precision search (compress/quant_mixed.py) keeps the crushed
activation in float and names it."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from compress import quant_check, quant_cnn, quant_cost, quant_mixed, runner
from compress.recipe import parse_recipe
from compress.report import build, markdown


def _graph(middle: list[str], second: str, extra_consumer: bool = False):
    """x -> Conv(1->4, channel 0's gain 1000x) -> middle ops -> second conv (depthwise or 1x1) -> y."""
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


@pytest.fixture(scope="module")
def wide_onnx(tmp_path_factory):
    """WIDE trained a little on digits and exported once for the module: the cases below quantize this file."""
    work = tmp_path_factory.mktemp("wide")
    (work / "wide.py").write_text(WIDE)
    recipe = parse_recipe(f"""
version: 1
name: wide-cnn-train
task: image-classification
teacher: {{source: 'python:{work / "wide.py"}:wide', license: mit}}
data: {{source: sklearn:digits, image_size: 16, eval_size: 100, train_limit: 200}}
stages:
  - {{kind: finetune, max_steps: 80, batch_size: 32, lr: 2.0e-2, eval_every: 0}}
  - {{kind: export, models: [teacher-finetuned]}}
""")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains 6x faster on one thread of a shared 2-core machine
    try:
        runner.run(recipe, work / "run", console=Console(stderr=True, quiet=True))
    finally:
        torch.set_num_threads(threads)
    return work / "run" / "artifacts" / "teacher-finetuned.onnx" / "model.onnx"


def _rows(feeds: list) -> set:
    return {image.tobytes() for feed in feeds for image in feed["pixel_values"]}


@pytest.mark.parametrize("int8, equalized, tried, agreement_at_least, agreement_below, kept, searched", [
    # equalized, 3 methods x per-channel on and off
    ("{calibration_size: 32}", True, 6, 0.95, None, None, {"choose", "search"}),
    ("{calibration_size: 32, calibration_search: [minmax]}", True, 2, 0.95, None, None, {"choose", "search"}),
    ("{calibration_size: 32, equalize: false, calibration_search: [], mixed: {target: 0}}", False, 0, 0.0, 0.5,
     0, set()),                                                                                # the weakness
    ("{calibration_size: 32, equalize: false, calibration_search: []}", False, 0, 0.9, None, 1,
     {"search"}),                                                                              # mixed mends it
])
def test_quantize_cnn_int8_static_equalizes_and_reports_the_calibration_choices(
        tmp_path, monkeypatch, wide_onnx, int8, equalized, tried, agreement_at_least, agreement_below, kept,
        searched):
    seen: dict = {}  # the images each choice was scored on, and the held-out ones the check reports

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen.setdefault(name, []).extend(args[2])  # choose(quantize, fp32, feeds, ...), search(dst, fp32, feeds)
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    spy(quant_cnn, "choose")
    spy(quant_mixed, "search")
    held_out = quant_check.held_out_feeds
    monkeypatch.setattr(quant_check, "held_out_feeds",
                        lambda *a, **k: seen.setdefault("held_out", held_out(*a, **k)))
    recipe = parse_recipe(f"""
version: 1
name: wide-cnn
task: image-classification
teacher: {{source: '{wide_onnx}', license: mit}}
data: {{source: sklearn:digits, image_size: 16, eval_size: 100, train_limit: 200}}
stages:
  - {{kind: quantize, schemes: [int8-static], check_size: 100, int8: {int8}}}
""")

    manifest = runner.run(recipe, tmp_path / "run", console=Console(stderr=True, quiet=True))

    metrics = manifest["stages"]["quantize"]["metrics"]["teacher.int8-static.onnx"]
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
    held_out = _rows(seen["held_out"])
    assert len(held_out) == 100 and {k for k in seen if k != "held_out" and seen[k]} == searched, seen.keys()
    for name in searched:  # the choices are scored on the 32 calibration images, never on a held-out one
        assert len(_rows(seen[name])) == 32 and not _rows(seen[name]) & held_out, name


def _qdq(tmp_path):
    """_graph's two convolutions (Relu between) as onnxruntime's int8 QDQ model, and the fp32 one."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    fp32 = _graph(["Relu"], "pointwise")
    fp32.graph.node[0].name, fp32.graph.node[2].name = "first", "second"
    onnx.save(fp32, str(tmp_path / "fp32.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": np.random.default_rng(i).random((1, 1, 8, 8), dtype=np.float32)}
                               for i in range(4)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "Relu"])
    return onnx.load(str(tmp_path / "qdq.onnx")), fp32


@pytest.mark.parametrize("kept, floats", [
    ([], set()),                                            # all int8
    ([("weight", "w2")], {"second"}),                       # a float weight: its convolution only
    ([("activation", "m0")], {"first", "second"}),          # the tensor between them (after the Relu): both
])
def test_quant_cost_float_convs_names_the_convolutions_a_kept_tensor_makes_fp32(tmp_path, kept, floats):
    qdq, fp32 = _qdq(tmp_path)
    found = quant_mixed.candidates(qdq, fp32)
    chosen = [c for c in found for kind, name in kept if c["kind"] == kind and name in c["tensors"]]
    assert len(chosen) == len(kept), found

    got = quant_cost.float_convs(quant_mixed.keep_float(qdq, fp32, chosen))

    assert got == floats
    assert quant_cost.conv_macs(fp32) == {"first": 4 * 9 * 6 * 6, "second": 6 * 4 * 6 * 6}  # 3x3, no padding: 6x6 out


@pytest.mark.parametrize("errors, convs, order", [
    ([0.010, 0.005], [{"big"}, {"small"}], [1, 0]),               # half the error at a tenth of the cost first
    ([0.010, 0.002], [{"small"}, {"big"}], [0, 1]),               # more error and cheaper: first
    ([0.010, 0.001, 0.002], [{"big"}, {"big"}, {"small"}], [2, 0, 1]),  # once "big" is float, 1 costs nothing
])
def test_quant_cost_cheapest_first_orders_by_error_per_cost(errors, convs, order):
    ranked = [{"kind": "activation", "tensors": [str(i)], "error_alone": e} for i, e in enumerate(errors)]

    got = quant_cost.cheapest_first(ranked, convs, {"big": 100_000, "small": 10_000})

    assert [c["tensors"][0] for c in got] == [str(i) for i in order]
    assert [c["float_convs"] for c in got] == sorted(c["float_convs"] for c in got)
