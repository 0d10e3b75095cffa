"""int4-weight quantization of the quantize stage (stages/quantize.py): onnxruntime's MatMulNBits, blockwise
4-bit weights of MatMul (and, for a causal LM, of the embedding Gather), with a tied output projection made
constant first so that it is quantized too.

The 4-bit MatMuls are quantized by one of onnxruntime's algorithms (`Int4Options.algorithm`): its blockwise
round-to-nearest (rtn), k-quant (a per-block search of scale and zero point), HQQ (float zero points) or GPTQ
(calibrated on the recipe's texts). The embedding table and the output projection it feeds may stay at 8 bits
(`embedding_bits`): symmetric blocks with scale absmax/127, which reproduce a GGUF Q8_0 table exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from compress import quant_tools
from compress.schema_base import StrictModel

Algorithm = Literal["rtn", "q4_1", "k-quant", "hqq", "gptq"]


class Int4Options(StrictModel):
    algorithm: Algorithm | None = Field(
        default=None, description="How the 4-bit MatMul weights are found (onnxruntime's MatMulNBitsQuantizer): "
        "rtn = round to nearest per block; q4_1 = GGUF's Q4_1: per block a "
        "float scale and a float minimum (the minimum's share is a small fp32 MatMul of the input's per-block "
        "sums: a Q4_1 GGUF teacher comes back exactly, to the int8 rounding of accuracy_level 4); k-quant = a "
        "per-block search of scale and zero point (llama.cpp's "
        "k-quants' idea); hqq = half-quadratic optimization, float zero points (onnxruntime's CPU kernel "
        "de-quantizes those at every call: slow); gptq = error-compensating rounding calibrated on the recipe's "
        "texts (int4.calibration_size). The embedding Gather is always rtn. Default: q4_1 for causal-lm (SmolLM2's "
        "Q4_1 teacher: the only option within 10% of its perplexity), rtn otherwise.")
    block_size: int = Field(default=32, ge=16, description="Weights per quantization block (a power of 2).")
    symmetric: bool | None = Field(
        default=None, description="Symmetric blocks (no zero point). Default: asymmetric for causal-lm (a "
        "GGUF Q4_1 teacher's blocks are asymmetric), symmetric for the encoder tasks.")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        default=None, description="onnxruntime's MatMulNBits compute type: 0 = the input's (fp32 on CPU), 4 = int8, "
        "which makes int4 decoding fast on CPU (SmolLM2-135M: 2.5x fp32's tokens/s, vs 1.1x with 0). Default: 4 "
        "for causal-lm, 0 for the encoder tasks (compute-bound: int4 there is about size, not speed).")
    embeddings: bool | None = Field(
        default=None, description="Also quantize the token embedding table (Gather): a causal LM's "
        "largest single tensor (SmolLM2-135M: 199 -> 103 MB at 4 bits), and most of a small encoder "
        "(all-MiniLM-L6-v2: 58 -> 16 MB, with its attention weights). Upgrades the model to opset 21. Default: yes.")
    embedding_bits: Literal[4, 8] | None = Field(
        default=None, description="Bits of the embedding table and of the output projection that reads the "
        "same vocabulary (a causal LM's lm_head, tied or not). Default: 8 for causal-lm (the next-token "
        "distribution is the most sensitive product), 4 otherwise.")
    calibration_size: int = Field(default=32, ge=1, description="algorithm: gptq: held-in texts run to calibrate.")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"block_size {value} is not a power of 2 (use 16, 32, 64, 128...)")
        return value


def resolved(opts: Int4Options, task: str) -> Int4Options:
    """`opts` with every default chosen for `task` (what measured best: bench/results/*-llm-int4.md)."""
    llm = task == "causal-lm"  # memory-bound decoding: int8 compute, asymmetric blocks, an 8-bit vocabulary
    pick = {"algorithm": "q4_1" if llm else "rtn", "accuracy_level": 4 if llm else 0, "embeddings": True,
            "symmetric": not llm,
            "embedding_bits": 8 if llm else 4}
    return opts.model_copy(update={k: v for k, v in pick.items() if getattr(opts, k) is None})


def int4(opts, src: Path, dst: Path, options: dict, exclude=None, only=None, calibration=None) -> None:
    """int4-weight of the model at `src` into `dst` with `opts` (resolved Int4Options); what was done goes into
    `options`. `exclude`: nodes the accuracy search keeps in 8 bits; `only`: quantize just these.
    `calibration`: a callable giving input feeds of the source model (algorithm gptq)."""
    import onnx

    from compress.stages import quantize_int4_algos as algos
    from compress.stages.quantize_int8 import standard_graph

    # A fused encoder hides its embedding table (EmbedLayerNormalization) and its QKV weights (Attention) from
    # MatMulNBits: rewritten as a plain Gather and MatMuls they are quantized too. The QKV projections go to 8
    # bits, not 4: on all-MiniLM-L6-v2 4-bit QKV cost 1.5 points of cosine for 7 MB (see quantize.py).
    src = standard_graph(src, options, ("EmbedLayerNormalization", "Attention"))
    model = fold_constant_transposes(onnx.load(str(src)))
    weights = {i.name for i in model.graph.initializer}
    qkv = [n.name for n in model.graph.node if n.op_type == "MatMul" and "/unfused/" in n.name
           and n.input[1] in weights and (not only or n.name in only)]
    head = algos.vocabulary_matmuls(model) if opts.embedding_bits == 8 else []
    head = [n for n in head if not only or n in only]
    eight = list(exclude or []) + qkv
    # The quantizer logs two INFO lines per node (thousands for an LLM) on the root handlers: keep warnings only.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = algos.four_bit(opts, model, exclude=eight + head, only=only, calibration=calibration, src=src)
    if head:  # before the 8-bit pass below, which takes every MatMul still in float
        algos.eight_bit_matmuls(model, head, opts.block_size, opts.accuracy_level)
        options["vocabulary_in_8_bits"] = head
    if eight:  # the accuracy search's picks and the QKV projections: 8 bits (MatMulNBits bits=8), not fp32
        model = algos.default_quantizer(model, 8, opts.block_size, opts.symmetric, ("MatMul",), include=eight)
        options.update({"kept_in_8_bits": len(exclude)} if exclude else {},
                       **({"attention_in_8_bits": len(qkv)} if qkv else {}))
    if opts.embeddings and not only:
        if opts.embedding_bits == 8:
            algos.eight_bit_gathers(model, opts.block_size)
        else:
            model = algos.default_quantizer(model, 4, opts.block_size, opts.symmetric, ("Gather",),
                                            axes=(("Gather", 1),))
    if quant_tools.reduce_axes_as_inputs(model):
        options["opset_fixes"] = "Reduce axes moved to inputs (the 4-bit Gather raises the opset to 21)"
    algos.save(model, dst)
    if not opts.embeddings:
        options["size_note"] = "the embedding table stays in fp32 (int4.embeddings: false)"
    op_types = ["MatMul", "Gather"] if opts.embeddings else ["MatMul"]
    options.update(algorithm=opts.algorithm, block_size=opts.block_size, symmetric=opts.symmetric,
                   op_types=op_types, accuracy_level=opts.accuracy_level,
                   embedding_bits=opts.embedding_bits if opts.embeddings or head else None,
                   **({"calibration_size": opts.calibration_size} if opts.algorithm == "gptq" else {}),
                   why="weight-only MatMulNBits: shrinks the file; memory-bound decoding gets faster")
    options["settings"] = settings_label(options)


def calibration(ctx, source, opts: Int4Options):
    """For algorithm gptq: a callable giving `opts.calibration_size` feeds of the recipe's training texts for the
    fp32 ONNX `source` (a causal LM's: whole texts with an empty key/value cache). None otherwise."""
    if opts.algorithm != "gptq":
        return None

    def feeds() -> list[dict]:
        if ctx.recipe.task == "causal-lm":
            return _lm_feeds(ctx, source.path, opts.calibration_size)
        task = ctx.task
        examples = task.examples(task.load_data(ctx.recipe.data).train)[:opts.calibration_size]
        batches = task.inputs(source.path).batches(examples, ctx.recipe.data.max_length, 1)
        return [{k: v for k, v in b.items() if not k.startswith("_")} for b in batches]
    return feeds


def _lm_feeds(ctx, folder: Path, size: int) -> list[dict]:
    import numpy as np
    import onnx

    from compress.stages import lm_text
    from compress.tasks.causal_lm import load_tokenizer

    tokenizer = load_tokenizer(folder, ctx.recipe.teacher.trust_remote_code)
    train, _, source = lm_text.texts(ctx)
    tok = lm_text.tokenize(tokenizer, train[:size], ctx.recipe.data.max_length, source)
    inputs = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.input
    out = []
    for ids in tok.ids:
        n = len(ids)
        feed = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, n), np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None]}
        for value in inputs:
            if value.name.startswith("past_key_values"):  # [batch, kv heads, past length 0, head dim]
                dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
                feed[value.name] = np.zeros((1, dims[1], 0, dims[3]), np.float32)
        out.append({k: v for k, v in feed.items() if k in {i.name for i in inputs}})
    return out


def recorded(scheme: str, options: dict) -> dict:
    """What compress.json records of an int4 variant's settings ({} for the other schemes)."""
    if scheme != "int4-weight" or not options.get("block_size"):
        return {}
    keys = ("algorithm", "block_size", "symmetric", "accuracy_level", "embedding_bits", "calibration_size")
    return {"settings": settings_label(options), "int4": {k: options[k] for k in keys if k in options}}


def settings_label(options: dict) -> str:
    """One line naming an int4 variant's settings, e.g. `rtn, block 32, asymmetric, int8 compute, vocabulary 8-bit`."""
    if not options.get("block_size"):
        return ""
    parts = [options.get("algorithm") or "rtn", f"block {options['block_size']}",
             "symmetric" if options.get("symmetric") else "asymmetric"]
    level = options.get("accuracy_level")
    parts.append("int8 compute" if level == 4 else f"accuracy_level {level}" if level else "fp32 compute")
    bits = options.get("embedding_bits")
    parts.append(f"vocabulary {bits}-bit" if bits else "embeddings fp32")
    if options.get("calibration_size"):
        parts.append(f"{options['calibration_size']} calibration texts")
    return ", ".join(parts)


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
