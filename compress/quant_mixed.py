"""int8-static of a CNN with the few tensors that cost the most agreement kept in float (issue 34 part 3).

After equalization and the calibration choice (compress/quant_cnn.py), what is left of int8's error is spread
over many tensors, but not evenly: measured on recipes/edge_cnn.py:mobilenet_wide, each activation quantized
alone (the rest float) adds 0.00001-0.0016 of relative output error, the first blocks' activations the most
(their error is carried through every layer after them), and one pointwise weight 0.0012. Removing one tensor's
quantization at a time from the full int8 model hides that: an activation and the Pad after it share one scale,
so removing one of them leaves the other rounding the same values. The candidates here are therefore groups:
the activation tensors that share a quantization scale, and each Conv/Gemm weight.

`search` ranks the candidates by the error each adds alone (relative squared error of the outputs against fp32)
per unit of the speed it costs (rank: error_per_cost, the default: the multiply-adds of the convolutions it makes
run in fp32, compress/quant_cost.py; or rank: error, the error alone), then keeps them in float in that order
until top-1 agreement with fp32 on the search images reaches the target, or the error falls to `error_ratio` of
int8's, or `max_kept` are kept (then the step with the smallest error); once stopped by the target or the error,
the next candidates that make no further convolution fp32 (no speed cost) are kept too while the error falls.
Measured on mobilenet_wide (256 training photos to search, 300 held-out): error 0.0090 -> 0.0018 with 12 kept,
held-out agreement 0.90-0.92 -> 0.963; agreement on the search images alone picked noisy peaks (0.977 at 8 kept,
0.923 held-out), hence the error rule. Ranked by error alone, the kept tensors are the first blocks', the
slowest to run in fp32 (13 kept: 0.96 held-out at 0.87x fp32's speed); ranked per cost, 16 kept make 8
convolutions fp32 instead of 9 (0.9533 held-out at 1.21x), and one more at no speed cost 0.9667 at 1.23-1.37x
(bench/results/2026-12-07-x86_64-2cpu-cnn-mixed.md).
"In float" means the Q/DQ pair is removed (a Relu that onnxruntime's quantizer folded into the pair is put
back), so onnxruntime runs that convolution in fp32 and the rest as int8: 16-bit activations would cost as much
speed (onnxruntime's CPU kernels have no 16-bit QLinearConv) for less accuracy. Only agreement, error and
counted multiply-adds decide, never a timing, so the same inputs give the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from compress import quant_cost
from compress.schema_base import StrictModel

SUFFIX = "_DequantizeLinear_Output"


class MixedOptions(StrictModel):
    target: float = Field(
        default=0.99, ge=0, le=1, description="Top-1 agreement with fp32 (on training-split images, not the "
        "held-out check images) at which the search stops keeping tensors in float; 0 turns the search off.")
    error_ratio: float = Field(
        default=0.2, ge=0, le=1, description="Or stop once the outputs' squared error against fp32 is at most this "
        "share of int8's (agreement on a few hundred images moves by points from one step to the next; the error "
        "falls smoothly).")
    rank: Literal["error_per_cost", "error"] = Field(
        default="error_per_cost", description="The order candidates are kept in float: by the output error each "
        "adds per unit of speed it costs (the multiply-adds of the convolutions it makes run in fp32, "
        "compress/quant_cost.py), or by the error alone (the first blocks, the slowest to run in fp32).")
    max_kept: int = Field(
        default=16, ge=0, description="At most this many candidates (an activation with the tensors sharing its "
        "scale, or one weight) kept in float: each makes its convolutions run in fp32. Not reached: the step with "
        "the smallest error is kept.")


def candidates(qdq, fp32) -> list[dict]:
    """The activation groups (tensors quantized with one scale) and the Conv/Gemm weights of `qdq` (an
    onnx ModelProto made by quantize_static from `fp32`) that can be kept in float."""
    floats = {i.name for i in fp32.graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear":
            groups.setdefault(node.input[1], []).append(node.input[0])
    found = [{"kind": "activation", "tensors": tensors} for tensors in groups.values()]
    users = {name for n in qdq.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") for name in n.input[1:2]}
    for node in qdq.graph.node:
        weight = node.output[0].removesuffix(SUFFIX)
        if node.op_type == "DequantizeLinear" and weight in floats and node.output[0] in users:
            found.append({"kind": "weight", "tensors": [weight]})
    return found


def keep_float(qdq, fp32, chosen: list[dict]):
    """A copy of `qdq` with the `chosen` candidates' quantization removed."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    acts = {t for c in chosen if c["kind"] == "activation" for t in c["tensors"]}
    weights = {t + SUFFIX for c in chosen if c["kind"] == "weight" for t in c["tensors"]}
    quantize = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in acts}
    present = {n.name for n in graph.node}
    made_by = {out: n for n in fp32.graph.node for out in n.output}
    originals = {i.name: i for i in fp32.graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.output[0] in quantize:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in quantize:
            tensor = quantize[node.input[0]].input[0]
            folded = made_by.get(tensor)
            if folded is not None and folded.op_type in ("Relu", "Clip") and folded.name not in present:
                copy = onnx.NodeProto()  # quantize_static folded this activation into the Q/DQ range: restore it
                copy.CopyFrom(folded)
                copy.input[0], copy.output[0], copy.name = tensor, node.output[0], f"{folded.name}_float"
                nodes.append(copy)
            else:
                nodes.append(helper.make_node("Identity", [tensor], [node.output[0]], name=f"{node.name}_float"))
            continue
        if node.op_type == "DequantizeLinear" and node.output[0] in weights:
            weight = onnx.TensorProto()
            weight.CopyFrom(originals[node.output[0].removesuffix(SUFFIX)])
            weight.name = node.output[0]
            graph.initializer.append(weight)
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _score(model, feeds: list, reference: list) -> tuple[float, float]:
    """(top-1 agreement, relative squared error) of `model`'s first output against `reference`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, f)[0] for f in feeds]).astype(np.float64)
    want = np.concatenate(reference).astype(np.float64)
    error = float(np.mean((got - want) ** 2) / max(float(np.mean(want ** 2)), 1e-30))
    same = float(np.mean(got.argmax(-1) == want.argmax(-1))) if want.ndim == 2 else float("nan")
    return round(same, 4), error


def search(qdq_path: Path, fp32, feeds: list, opts: MixedOptions) -> dict:
    """Keep the worst candidates of the model at `qdq_path` in float until `opts.target` (see the module's
    docstring); the chosen model replaces the file. Returns what was done, for the stage's report."""
    import onnx

    if not feeds or opts.target <= 0 or opts.max_kept <= 0:
        return {"target": opts.target, "kept_float": [], "reason": "off" if feeds else "no search images"}
    qdq = onnx.load(str(qdq_path))
    session_fp32 = fp32.SerializeToString()
    reference = _outputs(session_fp32, feeds)
    start, start_error = _score(qdq, feeds, reference)
    done = {"target": opts.target, "max_kept": opts.max_kept, "images": sum(len(next(iter(f.values())))
                                                                           for f in feeds),
            "int8_agreement": start, "int8_error": round(start_error, 6), "kept_float": [], "steps": []}
    if start >= opts.target:
        return {**done, "reason": f"int8 agreement {start} already reaches the target", "agreement": start}
    found = candidates(qdq, fp32)
    ranked = []
    for index, candidate in enumerate(found):  # the error each candidate adds alone, every other one in float
        others = found[:index] + found[index + 1:]
        ranked.append({**candidate, "error_alone": round(_score(keep_float(qdq, fp32, others), feeds,
                                                                 reference)[1], 6)})
    ranked.sort(key=lambda c: -c["error_alone"])
    if opts.rank == "error_per_cost":
        base = quant_cost.float_convs(qdq)
        convs = [quant_cost.float_convs(keep_float(qdq, fp32, [c])) - base for c in ranked]
        ranked = quant_cost.cheapest_first(ranked, convs, quant_cost.conv_macs(fp32))
    best = (start_error, 0)
    for k in range(1, min(opts.max_kept, len(ranked)) + 1):
        agreement, error = _score(keep_float(qdq, fp32, ranked[:k]), feeds, reference)
        done["steps"].append({"kept": k, "agreement": agreement, "error": round(error, 6),
                              **{key: ranked[k - 1][key] for key in ("float_convs",) if key in ranked[k - 1]}})
        best = min(best, (error, k))
        if agreement >= opts.target or error <= opts.error_ratio * start_error:
            best, reached = (error, k), (f"agreement {agreement} >= {opts.target}" if agreement >= opts.target
                                         else f"error {error:.6f} <= {opts.error_ratio} x int8's")
            break
    else:
        reached = None
    stopped = best[1]
    for k in range(best[1] + 1, len(ranked) + 1):  # then those that make no more convolutions fp32, while they help
        if reached is None or ranked[k - 1].get("cost") != 0:
            break
        agreement, error = _score(keep_float(qdq, fp32, ranked[:k]), feeds, reference)
        done["steps"].append({"kept": k, "agreement": agreement, "error": round(error, 6), "free": True})
        if error >= best[0]:
            break
        best = (error, k)
    kept = best[1]
    if kept:
        onnx.save(keep_float(qdq, fp32, ranked[:kept]), str(qdq_path))
    agreement = next((s["agreement"] for s in done["steps"] if s["kept"] == kept), start)
    return {**done, "kept_float": [_label(c) for c in ranked[:kept]], "agreement": agreement,
            "rank": opts.rank, "ranked": [{"name": _label(c), **{k: c[k] for k in ("error_alone", "cost") if k in c}}
                                          for c in ranked[:max(opts.max_kept, kept)]],
            "reason": (f"{reached} with {stopped} kept in float, then {kept - stopped} more at no speed cost"
                       if reached else
                       f"neither the target nor the error ratio reached within {opts.max_kept}: the smallest "
                       f"error kept ({kept} in float)")}


def _label(candidate: dict) -> str:
    return f"{candidate['kind']} {' + '.join(candidate['tensors'])}"


def _outputs(model_bytes: bytes, feeds: list) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return [session.run(None, f)[0] for f in feeds]
