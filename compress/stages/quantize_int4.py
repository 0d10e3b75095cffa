"""int4-weight quantization of the quantize stage (stages/quantize.py): onnxruntime's MatMulNBits, blockwise
4-bit weights of MatMul (and, for a causal LM, of the embedding Gather), with a tied output projection made
constant first so that it is quantized too.
"""

from __future__ import annotations

import logging
from pathlib import Path


def int4(opts, src: Path, dst: Path, options: dict, exclude=None, only=None) -> None:
    """int4-weight of the model at `src` into `dst` with `opts` (quantize.Int4Options); what was done goes into
    `options`. `exclude`: nodes the accuracy search keeps in 8 bits; `only`: quantize just these."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    op_types, axes = (("MatMul", "Gather"), (("MatMul", 0), ("Gather", 1))) if opts.embeddings else (("MatMul",), None)
    # The quantizer logs two INFO lines per node (thousands for an LLM) on the root handlers: keep warnings only.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(fold_constant_transposes(onnx.load(str(src))), bits=4,
                                     block_size=opts.block_size, is_symmetric=opts.symmetric,
                                     accuracy_level=opts.accuracy_level or None, op_types_to_quantize=op_types,
                                     quant_axes=axes, nodes_to_exclude=list(exclude or []),
                                     nodes_to_include=list(only or []) or None)
    quantizer.process()
    model = quantizer.model.model
    if exclude:  # the accuracy search keeps these in 8 bits (MatMulNBits bits=8), not fp32
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=opts.block_size, is_symmetric=opts.symmetric,
                                         op_types_to_quantize=("MatMul",), nodes_to_include=list(exclude))
        quantizer.process()
        options["kept_in_8_bits"] = len(exclude)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
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
