"""onnxruntime's fused transformer operators rewritten as standard ONNX (opset 17+) (layer: quant_tools).

The export stage fuses BERT-style graphs with onnxruntime's transformer optimizer (com.microsoft Attention,
EmbedLayerNormalization, SkipLayerNormalization, BiasGelu, FastGelu, Gelu): fast in onnxruntime, but quantizing
them gives more com.microsoft operators (QAttention, QEmbedLayerNormalization) that other runtimes cannot load
(OpenVINO 2026.4: "no conversion rule"), and they hide two large weights from the quantizers: the embedding table
(inside EmbedLayerNormalization) and the packed QKV weight (inside Attention). `unfuse` turns each back into
standard operators with the same numbers (cosine 1.0 to the fused graph), as separate MatMuls and a plain Gather
that any quantizer reaches. What it cannot rewrite it refuses (UnfuseError) rather than guess.
"""

from __future__ import annotations

import math

STANDARD_DOMAINS = ("", "ai.onnx")
# A padded key's attention score: the masked keys are zeroed, so their scores are exactly this. onnxruntime's
# Softmax (MLAS exp) runs about 9x slower on a row holding logits more than ~84 below the row's max (denormal
# intermediates): the fused Attention's -10000 filler cost MiniLM at b1, 46 of 128 tokens real, about a quarter
# of its time. -30 keeps every padded logit within 84 of the max while the row's max score is below 54 (MiniLM
# on reviews: -0.5 to 49), and leaves the padding's weight at e^-30 of the largest while that max is above 0.
MASKED_SCORE = -30.0
FUSED = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu")


class UnfuseError(ValueError):
    """A fused operator in a form this module does not rewrite (past state, a causal mask, an old opset...)."""


def unfuse(model, op_types=FUSED):
    """The model (changed in place and returned) with its com.microsoft `op_types` as standard operators."""
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    if opset < 17:
        raise UnfuseError(f"opset {opset}: standard LayerNormalization needs opset 17 (export with opset: 17)")
    rewriter = _Rewriter(model)
    nodes = []
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type in op_types:
            nodes.extend(rewriter.rewrite(node))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # The packed QKV weights and biases now live on as three initializers each: drop the originals.
    read = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


class _Rewriter:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.to_array = numpy_helper.to_array
        self.from_array = numpy_helper.from_array
        self.masks: dict[str, str] = {}  # mask_index tensor -> additive mask (B, 1, 1, S)
        self.count = 0

    # -- helpers -------------------------------------------------------------------------------------------
    def name(self, node, what: str) -> str:
        self.count += 1
        return f"{node.name or node.op_type}/unfused/{what}_{self.count}"

    def const(self, node, what: str, value) -> str:
        import numpy as np

        name = self.name(node, what)
        tensor = self.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def emit(self, new: list, node, op: str, inputs: list, what: str, outputs=None, **attrs) -> str:
        from onnx import helper

        outputs = outputs or [self.name(node, what)]
        new.append(helper.make_node(op, inputs, outputs, name=self.name(node, op), **attrs))
        return outputs[0]

    def attr(self, node, key: str, default=None):
        from onnx import helper

        found = next((a for a in node.attribute if a.name == key), None)
        return default if found is None else helper.get_attribute_value(found)

    def used(self, name: str) -> bool:
        return bool(name) and (any(name in n.input for n in self.graph.node)
                               or any(o.name == name for o in self.graph.output))

    def rewrite(self, node) -> list:
        new: list = []
        getattr(self, f"_{node.op_type}")(node, new)
        return new

    def layer_norm(self, new, node, x, gamma, beta, output) -> None:
        eps = self.attr(node, "epsilon", 1e-12)
        self.emit(new, node, "LayerNormalization", [x, gamma, beta] if beta else [x, gamma], "ln",
                  outputs=[output], axis=-1, epsilon=eps)

    # -- the fused operators -------------------------------------------------------------------------------
    def _SkipLayerNormalization(self, node, new) -> None:
        inputs = list(node.input) + [""] * (5 - len(node.input))
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if self.used(outputs[1]) or self.used(outputs[2]):
            raise UnfuseError(f"{node.name}: SkipLayerNormalization's mean/inv_std_var outputs are used")
        total = self.emit(new, node, "Add", [inputs[0], inputs[1]], "sum",
                          outputs=[outputs[3]] if outputs[3] and not inputs[4] else None)
        if inputs[4]:
            total = self.emit(new, node, "Add", [total, inputs[4]], "sum",
                              outputs=[outputs[3]] if outputs[3] else None)
        self.layer_norm(new, node, total, inputs[2], inputs[3], outputs[0])

    def _gelu(self, new, node, x: str, output: str, tanh: bool) -> None:
        if tanh:  # FastGelu: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = self.emit(new, node, "Mul", [x, self.emit(new, node, "Mul", [x, x], "sq")], "cube")
            inner = self.emit(new, node, "Add", [x, self.emit(new, node, "Mul", [
                cube, self.const(node, "c", _f32(0.044715))], "c3")], "inner")
            arg = self.emit(new, node, "Mul", [inner, self.const(node, "k", _f32(math.sqrt(2 / math.pi)))], "arg")
            curve = self.emit(new, node, "Tanh", [arg], "tanh")
        else:  # erf form, as PyTorch's exact GELU (and the pattern int8-static's after_gelu looks for)
            curve = self.emit(new, node, "Erf", [self.emit(new, node, "Div", [
                x, self.const(node, "sqrt2", _f32(math.sqrt(2)))], "scaled")], "erf")
        one = self.emit(new, node, "Add", [curve, self.const(node, "one", _f32(1.0))], "onep")
        half = self.emit(new, node, "Mul", [x, self.const(node, "half", _f32(0.5))], "half")
        self.emit(new, node, "Mul", [half, one], "gelu", outputs=[output])

    def _BiasGelu(self, node, new) -> None:
        x = self.emit(new, node, "Add", [node.input[0], node.input[1]], "biased")
        self._gelu(new, node, x, node.output[0], tanh=False)

    def _Gelu(self, node, new) -> None:
        self._gelu(new, node, node.input[0], node.output[0], tanh=False)

    def _FastGelu(self, node, new) -> None:
        x = node.input[0]
        if len(node.input) > 1 and node.input[1]:
            x = self.emit(new, node, "Add", [x, node.input[1]], "biased")
        self._gelu(new, node, x, node.output[0], tanh=True)

    def _EmbedLayerNormalization(self, node, new) -> None:
        ids, segments, word, position, segment_table, gamma, beta, mask, positions = (
            list(node.input) + [""] * (9 - len(node.input)))[:9]
        outputs = list(node.output) + [""] * (3 - len(node.output))
        total = self.emit(new, node, "Gather", [word, ids], "word", axis=0)
        if positions:
            rows = self.emit(new, node, "Gather", [position, positions], "position", axis=0)
        else:  # positions 0..S-1: the first S rows of the table, broadcast over the batch
            length = self.emit(new, node, "Shape", [ids], "length", start=1, end=2)
            rows = self.emit(new, node, "Slice", [position, self.const(node, "zero", [0]), length,
                                                  self.const(node, "axis", [0])], "position")
        total = self.emit(new, node, "Add", [total, rows], "sum")
        if segments and segment_table:
            total = self.emit(new, node, "Add", [total, self.emit(
                new, node, "Gather", [segment_table, segments], "segment", axis=0)], "sum",
                outputs=[outputs[2]] if outputs[2] else None)
        elif outputs[2]:
            total = self.emit(new, node, "Identity", [total], "sum", outputs=[outputs[2]])
        self.layer_norm(new, node, total, gamma, beta, outputs[0])
        if outputs[1]:
            if not mask:
                raise UnfuseError(f"{node.name}: EmbedLayerNormalization without a mask input")
            self.masks[outputs[1]] = mask
            if any(outputs[1] in n.input and n.op_type != "Attention" for n in self.graph.node):
                self.emit(new, node, "ReduceSum", [self.emit(new, node, "Cast", [mask], "mask32", to=6),
                                                   self.const(node, "axes", [1])], "lengths",
                          outputs=[outputs[1]], keepdims=0)

    def _Attention(self, node, new) -> None:
        inputs = list(node.input) + [""] * (4 - len(node.input))
        if len(node.input) > 4 and any(node.input[4:]) or self.attr(node, "unidirectional", 0):
            raise UnfuseError(f"{node.name}: Attention with past state, extra bias or a causal mask")
        if len(node.output) > 1 and any(node.output[1:]):
            raise UnfuseError(f"{node.name}: Attention with a present-state output")
        if inputs[1] not in self.initializers or inputs[2] not in self.initializers:
            raise UnfuseError(f"{node.name}: Attention whose weight or bias is not a constant")
        heads = self.attr(node, "num_heads")
        weight, bias = self.to_array(self.initializers[inputs[1]]), self.to_array(self.initializers[inputs[2]])
        sizes = list(self.attr(node, "qkv_hidden_sizes", []) or [weight.shape[1] // 3] * 3)
        if sizes[0] != sizes[1] or sizes[0] != sizes[2]:
            raise UnfuseError(f"{node.name}: Attention with unequal qkv_hidden_sizes {sizes}")
        head = sizes[0] // heads
        scale = self.attr(node, "scale", 0.0) or 1 / math.sqrt(head)
        parts = []
        for index, part in enumerate(("q", "k", "v")):
            cols = slice(index * sizes[0], (index + 1) * sizes[0])
            w = self.const(node, f"{part}_weight", weight[:, cols].copy())
            b = self.const(node, f"{part}_bias", bias[cols].copy())
            projected = self.emit(new, node, "Add", [self.emit(new, node, "MatMul", [inputs[0], w], part), b], part)
            if part == "k" and inputs[3]:  # masked keys' scores become exactly 0, then MASKED_SCORE (see below)
                projected = self.emit(new, node, "Mul", [projected, self.mask(node, inputs[3], new)[0]], part)
            split = self.emit(new, node, "Reshape", [projected, self.const(node, "heads", [0, 0, heads, head])],
                              part)
            perm = [0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]
            parts.append(self.emit(new, node, "Transpose", [split], part, perm=perm))
        scores = self.emit(new, node, "MatMul", [parts[0], parts[1]], "scores")
        scores = self.emit(new, node, "Mul", [scores, self.const(node, "scale", _f32(scale))], "scores")
        if inputs[3]:
            scores = self.emit(new, node, "Add", [scores, self.mask(node, inputs[3], new)[1]], "scores")
        probs = self.emit(new, node, "Softmax", [scores], "probs", axis=-1)
        context = self.emit(new, node, "Transpose", [self.emit(new, node, "MatMul", [probs, parts[2]], "context")],
                            "context", perm=[0, 2, 1, 3])
        self.emit(new, node, "Reshape", [context, self.const(node, "merge", [0, 0, sizes[2]])], "out",
                  outputs=[node.output[0]])

    def mask(self, node, mask_index: str, new) -> tuple[str, str]:
        """(keep (B, S, 1): 1 for a token, 0 for padding, which zeroes the masked keys; (1 - mask) * MASKED_SCORE
        shaped (B, 1, 1, S), added to the scores): made once per mask and shared by the layers."""
        raw = self.masks.get(mask_index)
        producer = self.producer.get(mask_index)
        if raw is None and producer is not None and producer.op_type == "EmbedLayerNormalization":
            raw = producer.input[7] if len(producer.input) > 7 else ""
        if raw is None:
            raw = mask_index  # a raw (B, S) 0/1 mask (ORT's fusion without EmbedLayerNormalization)
        key = f"additive:{raw}"
        if key not in self.masks:
            keep = self.emit(new, node, "Cast", [raw], "mask", to=1)
            drop = self.emit(new, node, "Sub", [self.const(node, "one", _f32(1.0)), keep], "mask")
            scaled = self.emit(new, node, "Mul", [drop, self.const(node, "filler", _f32(MASKED_SCORE))], "mask")
            self.masks[key] = self.emit(new, node, "Unsqueeze", [scaled, self.const(node, "axes", [1, 2])], "mask")
            self.masks[f"keep:{raw}"] = self.emit(new, node, "Unsqueeze", [keep, self.const(node, "axes", [2])],
                                                  "keep")
        return self.masks[f"keep:{raw}"], self.masks[key]


def _f32(value: float):
    import numpy as np

    return np.array(value, dtype=np.float32)
