"""int4-weight quantization of the quantize stage (stages/quantize.py): onnxruntime's MatMulNBits, blockwise
4-bit weights of MatMul (and, for a causal LM, of the embedding Gather), with a tied output projection made
constant first so that it is quantized too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compress import quant_tools


def int4(opts, src: Path, dst: Path, options: dict, exclude=None, only=None) -> None:
    """int4-weight of the model at `src` into `dst` with `opts` (quantize.Int4Options); what was done goes into
    `options`. `exclude`: nodes the accuracy search keeps in 8 bits; `only`: quantize just these."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from compress.stages.quantize_int8 import standard_graph

    op_types, axes = (("MatMul", "Gather"), (("MatMul", 0), ("Gather", 1))) if opts.embeddings else (("MatMul",), None)
    # A fused encoder hides its embedding table (EmbedLayerNormalization) and its QKV weights (Attention) from
    # MatMulNBits: rewritten as a plain Gather and MatMuls they are quantized too. The QKV projections go to 8
    # bits, not 4: on all-MiniLM-L6-v2 4-bit QKV cost 1.5 points of cosine for 7 MB (see quantize.py).
    src = standard_graph(src, options, ("EmbedLayerNormalization", "Attention"))
    model = fold_constant_transposes(onnx.load(str(src)))
    weights = {i.name for i in model.graph.initializer}
    qkv = [n.name for n in model.graph.node if n.op_type == "MatMul" and "/unfused/" in n.name
           and n.input[1] in weights and (not only or n.name in only)]
    eight = list(exclude or []) + qkv
    # The quantizer logs two INFO lines per node (thousands for an LLM) on the root handlers: keep warnings only.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, bits=4,
                                     block_size=opts.block_size, is_symmetric=opts.symmetric,
                                     accuracy_level=opts.accuracy_level or None, op_types_to_quantize=op_types,
                                     quant_axes=axes, nodes_to_exclude=eight,
                                     nodes_to_include=list(only or []) or None)
    quantizer.process()
    model = quantizer.model.model
    if eight:  # the accuracy search's picks and the QKV projections: 8 bits (MatMulNBits bits=8), not fp32
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=opts.block_size, is_symmetric=opts.symmetric,
                                         op_types_to_quantize=("MatMul",), nodes_to_include=eight)
        quantizer.process()
        model = quantizer.model.model
        options.update({"kept_in_8_bits": len(exclude)} if exclude else {},
                       **({"attention_in_8_bits": len(qkv)} if qkv else {}))
    if quant_tools.reduce_axes_as_inputs(model):
        options["opset_fixes"] = "Reduce axes moved to inputs (the 4-bit Gather raises the opset to 21)"
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    if not opts.embeddings:
        options["size_note"] = "the embedding table stays in fp32 (int4.embeddings: false)"
    options.update(block_size=opts.block_size, symmetric=opts.symmetric, op_types=list(op_types),
                   accuracy_level=opts.accuracy_level,
                   why="weight-only MatMulNBits: shrinks the file; compute stays fp32 on CPU")


def fold_constant_transposes(model):
    """Transpose(initializer) -> a transposed initializer. A causal LM with tied embeddings computes its output
    projection's weight as Transpose(embedding) at run time; MatMulNBits needs it constant to quantize it."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        value = numpy_helper.to_array(initializers[node.input[0]]).transpose(perm)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), node.output[0]))
        graph.node.remove(node)
    return model
