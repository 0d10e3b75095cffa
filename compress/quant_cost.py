"""What keeping a tensor of an int8 QDQ model in float costs in speed, counted, not timed (issue 34 part 3).

onnxruntime runs a convolution in int8 (QLinearConv) only where its input and weight come through a
DequantizeLinear and its output goes (through a Relu that can be folded) to a QuantizeLinear: removing any of
those Q/DQ pairs makes that convolution run in fp32, with its neighbours' Q/DQ as separate operators. The cost
of a set of kept tensors is therefore the convolutions it makes float: their multiply-adds, plus a fixed
`OVERHEAD` share of the model's multiply-adds for each (the separate Q/DQ operators and the fp32 kernel's call:
on recipes/edge_cnn.py:mobilenet_wide at batch 1, a small model, they weigh as much as the arithmetic).
Counting keeps the choice reproducible (the same inputs give the same model) where a timing would not be.
"""

from __future__ import annotations

OVERHEAD = 0.01


def conv_macs(fp32) -> dict[str, int]:
    """Multiply-adds per Conv/Gemm node of `fp32` (an onnx ModelProto, batch 1): from the inferred output shape,
    else the weight's size (a shape that stays symbolic)."""
    import numpy as np
    from onnx import shape_inference

    try:
        model = shape_inference.infer_shapes(fp32)
    except Exception:  # onnx's C++ errors: fall back to the weights' sizes
        model = fp32
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output)}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in weights:
            continue
        w, out = weights[node.input[1]], shapes.get(node.output[0]) or []
        spatial = out[2:] if node.op_type == "Conv" and len(out) > 2 and all(out[2:]) else []
        macs[node.name] = int(np.prod(w) * np.prod(spatial or [1]))
    return macs


def float_convs(qdq) -> set[str]:
    """The Conv/Gemm nodes of the QDQ model `qdq` that onnxruntime cannot run as int8."""
    made = {out: n for n in qdq.graph.node for out in n.output}
    users: dict[str, list] = {}
    for node in qdq.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    found = set()
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dequantized = all(getattr(made.get(node.input[i]), "op_type", None) == "DequantizeLinear" for i in (0, 1))
        after = users.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Relu":
            after = users.get(after[0].output[0], [])
        if not (dequantized and after and all(u.op_type == "QuantizeLinear" for u in after)):
            found.add(node.name)
    return found


def cheapest_first(ranked: list[dict], convs: list[set], macs: dict[str, int]) -> list[dict]:
    """`ranked` candidates (each with its "error_alone") reordered greedily by error removed per unit of cost:
    at each step the candidate with the most error per multiply-add of the convolutions it newly makes float
    (`convs[i]`: those of ranked[i]; one already float costs nothing more). Each gets its "cost" (that share
    of the model's multiply-adds) and "float_convs" (after it)."""
    total = max(sum(macs.values()), 1)
    overhead = OVERHEAD * total
    left, order, floating = list(range(len(ranked))), [], set()

    def cost(i: int) -> float:
        return sum(macs.get(name, 0) + overhead for name in convs[i] - floating)

    while left:
        best = max(left, key=lambda i: (ranked[i]["error_alone"] / (cost(i) + 1.0), -i))
        left.remove(best)
        order.append({**ranked[best], "cost": round(cost(best) / total, 4)})
        floating |= convs[best]
        order[-1]["float_convs"] = len(floating)
    return order
