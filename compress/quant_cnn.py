"""int8-static for convolutional networks: cross-layer equalization and the calibration choice, measured.

A depthwise-separable CNN trained without ReLU6's clipping, or with depthwise channels whose gains differ by
decades, has activations whose ranges differ by as much from channel to channel: one int8 scale per tensor
(onnxruntime's only choice for activations) crushes the small channels to a step or two. Per-channel weights
cannot help there. Cross-layer equalization (Nagel et al. 2019, "Data-free quantization") rescales each
channel c of a convolution by 1/s_c and the next convolution's input channel c by s_c, exact in fp32 across a
ReLU and zero padding, so that both weight ranges, and the activation ranges between them, even out.
Measured on recipes/edge_cnn.py:mobilenet_wide benched on photo patches (not its classes; bench/results/
2026-12-06-*-cnn.md): widest per-channel weight-range ratio 853 -> 34, top-1 agreement with fp32 0.90 -> 0.93
(minmax, per-channel). Not there yet: keeping blocks in fp32 (with their activations) gained at most a point a
block and lost the speed; per-tensor weights cost 8-12 points; a one-shot empirical bias correction cost points;
64 calibration images instead of 256 gained a point; 16-bit activations reach 0.97 but run at 0.47x fp32's speed:
the 8-bit activations are what is left.

`choose` then quantizes the equalized model with every calibration choice asked for (method x per-channel),
scores each against the fp32 model (top-1 agreement) on the stage's search images, training-split images
(compress/stages/quantize_int8.py:search_feeds), never the held-out ones the check and the bench report, and
keeps the best: the stage's metadata lists every choice tried and the one kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

# After a convolution, operators through which a per-channel positive scale passes unchanged.
HOMOGENEOUS = {"Relu", "Pad", "MaxPool", "Identity"}


def equalize(model, iterations: int = 3) -> dict:
    """Cross-layer equalization of `model` (an onnx ModelProto, changed in place): every Conv -> (Relu, zero
    Pad, MaxPool)* -> Conv pair whose middle tensors have no other consumer. Returns what was done."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    pairs = _pairs(model, inits)
    spread_before = _spread(pairs, inits)
    for _ in range(iterations):
        for first, second in pairs:
            w1 = numpy_helper.to_array(inits[first.input[1]]).astype(np.float32)
            w2 = numpy_helper.to_array(inits[second.input[1]]).astype(np.float32)
            depthwise = _group(second) > 1
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = (np.abs(w2).reshape(w2.shape[0], -1).max(axis=1) if depthwise
                  else np.abs(w2).transpose(1, 0, 2, 3).reshape(w2.shape[1], -1).max(axis=1))
            ok = (r1 > 0) & (r2 > 0)
            scale = np.where(ok, np.sqrt(np.where(ok, r1 * r2, 1.0)) / np.where(ok, r2, 1.0), 1.0)
            scale = scale.astype(np.float32)
            w1 = w1 / scale.reshape(-1, 1, 1, 1)
            w2 = w2 * (scale.reshape(-1, 1, 1, 1) if depthwise else scale.reshape(1, -1, 1, 1))
            inits[first.input[1]].CopyFrom(numpy_helper.from_array(w1, first.input[1]))
            inits[second.input[1]].CopyFrom(numpy_helper.from_array(w2, second.input[1]))
            if len(first.input) > 2 and first.input[2]:
                bias = numpy_helper.to_array(inits[first.input[2]]).astype(np.float32) / scale
                inits[first.input[2]].CopyFrom(numpy_helper.from_array(bias, first.input[2]))
    return {"pairs": len(pairs), "weight_range_spread_before": spread_before,
            "weight_range_spread_after": _spread(pairs, inits)}


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _pairs(model, inits: dict) -> list:
    """(first Conv, second Conv) pairs that can be equalized exactly."""
    from onnx import numpy_helper

    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}

    def plain_conv(node) -> bool:  # 4-D constant weight (and bias), groups of 1 or depthwise
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            return False
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            return False
        shape = inits[node.input[1]].dims
        return len(shape) == 4 and (_group(node) == 1 or shape[1] == 1)

    def zero_pad(node) -> bool:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        value = node.input[2] if len(node.input) > 2 else ""
        return mode == b"constant" and (not value or (value in inits and not numpy_helper.to_array(
            inits[value]).any()))

    pairs = []
    for node in model.graph.node:
        if not plain_conv(node):
            continue
        tensor, path_ok = node.output[0], True
        while True:
            users = consumers.get(tensor, [])
            if tensor in outputs or len(users) != 1:
                path_ok = False
                break
            user = users[0]
            if user.op_type in HOMOGENEOUS and (user.op_type != "Pad" or zero_pad(user)):
                tensor = user.output[0]
                continue
            break
        if not path_ok or user.op_type != "Conv" or not plain_conv(user) or user.input[0] != tensor:
            continue
        out_channels = inits[node.input[1]].dims[0]
        w2 = inits[user.input[1]].dims
        if (_group(user) > 1 and w2[0] == out_channels == _group(user)) or (_group(user) == 1 and
                                                                             w2[1] == out_channels):
            pairs.append((node, user))
    return pairs


def _spread(pairs: list, inits: dict) -> float | None:
    """The largest ratio of per-channel weight ranges within one equalized convolution (1 = even)."""
    from onnx import numpy_helper

    worst = None
    for first, _ in pairs:
        w = np.abs(numpy_helper.to_array(inits[first.input[1]]))
        r = w.reshape(w.shape[0], -1).max(axis=1)
        r = r[r > 0]
        if len(r):
            worst = max(worst or 0.0, float(r.max() / r.min()))
    return None if worst is None else round(worst, 1)


def agreement(model_path: Path, reference: list, feeds: list) -> float:
    """Top-1 agreement of the model at `model_path` with `reference` logits on `feeds`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    same = total = 0
    for feed, ref in zip(feeds, reference):
        out = session.run(None, feed)[0]
        same += int((out.argmax(-1) == ref.argmax(-1)).sum())
        total += ref.shape[0]
    return round(same / total, 4) if total else float("nan")


def outputs(model_path: Path, feeds: list) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in feeds]


def tune(model, quantize: Callable, fp32: Path, feeds: list, methods: list[str], equalize_on: bool,
         scratch: Path, options: dict) -> tuple:
    """(model to quantize, calibration method, per_channel) for a conv-dominated model: equalized when asked,
    then every method x per-channel choice scored on `feeds` (training images, never the held-out check
    images: the agreement reported would be biased) with `quantize(model, path, method, per_channel)`. What was
    done goes into options["cnn"]; a second call with the same options (the accuracy search's steps) reuses it."""
    import onnx

    done = options.get("cnn")
    if done is None:
        done = {"equalization": equalize(model) if equalize_on else "off", "scored_on": sum(
            len(next(iter(f.values()))) for f in feeds)}
        if methods and feeds:
            choices = [{"calibration": m, "per_channel": pc} for pc in (True, False) for m in methods]
            frozen = onnx.ModelProto()
            frozen.CopyFrom(model)

            def each(path: Path, choice: dict) -> None:
                copy = onnx.ModelProto()
                copy.CopyFrom(frozen)
                quantize(copy, path, choice["calibration"], choice["per_channel"])

            scratch.mkdir(parents=True, exist_ok=True)
            best, rows = choose(each, fp32, feeds, choices, scratch)
            done.update(chosen={k: best[k] for k in ("calibration", "per_channel", "agreement")}, tried=rows)
        options["cnn"] = done
    elif done["equalization"] != "off":
        equalize(model)
    chosen = done.get("chosen")
    return model, (chosen or {}).get("calibration"), (chosen or {}).get("per_channel")


def choose(quantize: Callable[[Path, dict], None], fp32: Path, feeds: list, choices: list[dict],
           scratch: Path) -> tuple[dict, list[dict]]:
    """Quantize with each of `choices` ({"calibration": ..., "per_channel": ...}) into `scratch`, score each by
    agreement with `fp32` on `feeds`: the best choice (ties: the first) and every row tried."""
    import shutil

    reference = outputs(fp32, feeds)
    rows = []
    for index, choice in enumerate(choices):
        path = scratch / f"choice-{index}.onnx"
        quantize(path, choice)
        rows.append({**choice, "agreement": agreement(path, reference, feeds)})
        path.unlink(missing_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)
    best = max(rows, key=lambda r: r["agreement"])  # max keeps the first of equals
    return best, rows
