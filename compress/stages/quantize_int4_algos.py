"""The weight quantizers of int4-weight (stages/quantize_int4.py): onnxruntime's MatMulNBitsQuantizer with the
algorithm the recipe names, and an 8-bit blockwise packing of the vocabulary (embedding Gather, output MatMul).

The 8-bit packing is ours, not onnxruntime's quantizer: symmetric blocks with scale absmax/127 and the default
zero point 128, so that a table that was 8-bit already (a GGUF teacher's Q8_0 token_embd) comes back exactly.
"""

from __future__ import annotations

from pathlib import Path

BITS8_ZERO = 128  # MatMulNBits' and GatherBlockQuantized's default zero point for 8 bits


def four_bit(opts, model, exclude: list[str], only=None, calibration=None, src: Path | None = None):
    """`model` (ModelProto) with its constant-weight MatMuls in 4 bits by `opts.algorithm`; `exclude` stay."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    algorithm = opts.algorithm
    if algorithm == "q4_1":  # then round to nearest for what it leaves (K not a multiple of the block)
        added: list[str] = []
        model = q4_1(model, exclude, only, opts.block_size, opts.accuracy_level, added)
        exclude = list(exclude) + added
    if only and algorithm in ("k-quant", "gptq"):  # their weight config covers every MatMul: exclude the rest
        exclude = list(exclude) + [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in only]
    config = None
    if algorithm == "k-quant":
        config = mnq.KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
    elif algorithm == "hqq":
        config = mnq.HQQWeightOnlyQuantConfig(block_size=opts.block_size, bits=4, op_types_to_quantize=("MatMul",))
    elif algorithm == "gptq":
        config = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(calibration() if calibration else []),
                                               op_types_to_quantize=("MatMul",))
    quantizer = _quantizer_class()(model, bits=4, block_size=opts.block_size, is_symmetric=opts.symmetric,
                                         accuracy_level=opts.accuracy_level or None, op_types_to_quantize=("MatMul",),
                                         nodes_to_exclude=list(exclude), nodes_to_include=list(only or []) or None,
                                         algo_config=config)
    quantizer.process()
    return _proto(quantizer.model)


def q4_1(model, exclude, only, block_size: int, accuracy_level: int | None, added: list | None = None,
         grid_only: bool = True):
    """Each constant [K, N] MatMul weight (3-D input, K a multiple of `block_size`) as GGUF's Q4_1: per block of
    the input dim, 4-bit q with a float scale d and a float minimum m (w = d*q + m; d, m from the block's min and
    max). MatMulNBits takes d with zero point 0; the m part is x's per-block sums times m, a small fp32 MatMul
    ([.., K/block] x [K/block, N]) added to it, shared by the MatMuls that read the same input. A Q4_1 teacher's
    weights come back exactly: its blocks' min and max are q=0 and q=15 by construction.

    Only weights that sit on such a grid are taken (every value within 1% of a step of its block's grid): on
    weights trained in float it measured far worse than round-to-nearest (SmolLM2's distilled 15-layer student:
    held-out perplexity 11.2 fp32, 121 in Q4_1 form, 13.9 with rtn asymmetric), so those are left to rtn."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    sums: dict[str, str] = {}
    for node in list(graph.node):
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if (weight is None or len(weight.dims) != 2 or weight.dims[0] % block_size or node.name in exclude
                or (only and node.name not in only)):
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        k, n = w.shape
        blocks = k // block_size
        tiles = w.T.reshape(n, blocks, block_size)
        low, high = tiles.min(axis=2), tiles.max(axis=2)
        scale = (high - low) / 15.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint((tiles - low[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
        if grid_only and (np.abs(q * scale[..., None] + low[..., None] - tiles) > 0.01 * scale[..., None]).any():
            continue  # not a Q4_1 grid: rtn takes it
        # w = d*q + m = d*(q - z) + (m + d*z), z the integer nearest -m/d: MatMulNBits' part is then the weight
        # itself to within d/2 and the fp32 part a small correction. With z = 0 (the first form) int8 compute
        # (accuracy_level 4) multiplied its input rounding by weights offset by m, which the exact fp32 m-part
        # did not cancel: the teacher's held-out perplexity (all tokens) 17.30 vs fp32 16.77; centred 16.84.
        zero = np.clip(np.rint(-low / scale), 0, 15).astype(np.uint8)  # [N, blocks]
        padded = np.concatenate([zero, np.zeros((n, blocks % 2), np.uint8)], axis=1)
        stem = f"{weight.name}_Q4_1"
        graph.initializer.extend([
            numpy_helper.from_array(q[..., 0::2] | (q[..., 1::2] << 4), stem),
            numpy_helper.from_array(scale.reshape(-1).astype(np.float32), f"{stem}_scales"),
            numpy_helper.from_array((padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(-1), f"{stem}_zp"),
            numpy_helper.from_array(np.ascontiguousarray((low + zero * scale).T.astype(np.float32)), f"{stem}_min")])
        x, out = node.input[0], node.output[0]
        new = [helper.make_node("MatMulNBits", [x, stem, f"{stem}_scales", f"{stem}_zp"], [f"{out}_q4"],
                                name=f"{node.name}_Q4", domain="com.microsoft", K=k, N=n, bits=4,
                                block_size=block_size, **({"accuracy_level": accuracy_level} if accuracy_level else {}))]
        if (x, block_size) not in sums:
            sums[(x, block_size)] = f"{x}_block_sums"
            graph.initializer.extend([
                numpy_helper.from_array(np.asarray([0, 0, blocks, block_size], np.int64), f"{x}_block_shape"),
                numpy_helper.from_array(np.asarray([-1], np.int64), f"{x}_block_axis")])
            new += [helper.make_node("Reshape", [x, f"{x}_block_shape"], [f"{x}_blocks"], name=f"{node.name}_blocks"),
                    helper.make_node("ReduceSum", [f"{x}_blocks", f"{x}_block_axis"], [sums[(x, block_size)]],
                                     name=f"{node.name}_block_sums", keepdims=0)]
        new += [helper.make_node("MatMul", [sums[(x, block_size)], f"{stem}_min"], [f"{out}_min"],
                                 name=f"{node.name}_min"),
                helper.make_node("Add", [f"{out}_q4", f"{out}_min"], [out], name=f"{node.name}_add_min")]
        if added is not None:  # the fp32 MatMuls of the minimums: no later pass may quantize them
            added.append(f"{node.name}_min")
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, item in enumerate(new):
            graph.node.insert(index + offset, item)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _drop_unused(model)
    return model


def _quantizer_class():
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Quantizer(MatMulNBitsQuantizer):
        """onnxruntime's, but GPTQ keeps nodes_to_exclude too (its weight config otherwise covers every MatMul)."""

        def _generate_q4_node_config(self):
            config = super()._generate_q4_node_config()
            return {**config, **dict.fromkeys(self.nodes_to_exclude & set(config), "fp32")}
    return Quantizer


def default_quantizer(model, bits: int, block_size: int, symmetric: bool, op_types, include=None, axes=None):
    """onnxruntime's blockwise round-to-nearest quantizer over `op_types` (and `include`)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     op_types_to_quantize=tuple(op_types), quant_axes=axes,
                                     nodes_to_include=list(include) if include else None)
    quantizer.process()
    return _proto(quantizer.model)


def _proto(model):
    return model.model if hasattr(model, "model") else model  # ONNXModel or ModelProto, by algorithm


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds (GPTQ deep-copies it once per use)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.index = list(feeds), 0

    def get_next(self):
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def __iter__(self):
        return iter(self.feeds)


def vocabulary_matmuls(model) -> list[str]:
    """MatMuls whose constant weight is [hidden, vocab] for an embedding Gather's [vocab, hidden] table: the output
    projection (tied after fold_constant_transposes, or its own weight)."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    tables = {shapes[n.input[0]] for n in model.graph.node
              if n.op_type == "Gather" and len(shapes.get(n.input[0], ())) == 2}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2
            and shapes[n.input[1]][::-1] in tables]


def _blocks8(matrix, block_size: int):
    """Rows of `matrix` [rows, k] in symmetric 8-bit blocks along k: (uint8 [rows, blocks, block] zero-padded,
    float32 scales [rows, blocks])."""
    import numpy as np

    rows, k = matrix.shape
    blocks = -(-k // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float32)
    padded[:, :k] = matrix
    padded = padded.reshape(rows, blocks, block_size)
    scales = np.abs(padded).max(axis=2) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(padded / scales[..., None]), -127, 127).astype(np.int16) + BITS8_ZERO
    return q.astype(np.uint8), scales.astype(np.float32)


def eight_bit_matmuls(model, names: list[str], block_size: int, accuracy_level: int | None) -> None:
    """Replace the MatMuls `names` (constant weight [K, N]) by 8-bit MatMulNBits, in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    for index, node in enumerate(list(graph.node)):
        if node.name not in names:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        k, n = weight.shape
        q, scales = _blocks8(weight.T, block_size)
        stem = f"{node.input[1]}_Q8"
        graph.initializer.extend([numpy_helper.from_array(q, stem), numpy_helper.from_array(scales.reshape(-1),
                                                                                          f"{stem}_scales")])
        new = helper.make_node("MatMulNBits", [node.input[0], stem, f"{stem}_scales"], list(node.output),
                               name=f"{node.name}_Q8", domain="com.microsoft", K=k, N=n, bits=8,
                               block_size=block_size, **({"accuracy_level": accuracy_level} if accuracy_level else {}))
        graph.node.remove(node)
        graph.node.insert(index, new)
    _drop_unused(model)


def eight_bit_gathers(model, block_size: int) -> None:
    """Replace each Gather of a constant [vocab, hidden] table by an 8-bit GatherBlockQuantized, in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    for index, node in enumerate(list(graph.node)):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        values = numpy_helper.to_array(table)
        q, scales = _blocks8(values, block_size)
        stem = f"{table.name}_Q8"
        data = q.reshape(values.shape[0], -1)[:, :values.shape[1]]
        zero = numpy_helper.from_array(__import__("numpy").full(scales.shape, BITS8_ZERO, "uint8"), f"{stem}_zp")
        graph.initializer.extend([numpy_helper.from_array(data.copy(), stem),
                                  numpy_helper.from_array(scales, f"{stem}_scales"), zero])
        new = helper.make_node("GatherBlockQuantized", [stem, node.input[1], f"{stem}_scales", f"{stem}_zp"],
                               list(node.output), name=f"{node.name}_Q8", domain="com.microsoft", bits=8,
                               block_size=block_size, gather_axis=0, quantize_axis=1)
        graph.node.remove(node)
        graph.node.insert(index, new)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _drop_unused(model)


def _drop_unused(model) -> None:
    graph = model.graph
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def save(model, dst: Path) -> None:
    from onnxruntime.quantization.onnx_model import ONNXModel

    ONNXModel(model).save_model_to_file(str(dst), use_external_data_format=False)
