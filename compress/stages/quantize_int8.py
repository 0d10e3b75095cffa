"""int8 quantization of the quantize stage (stages/quantize.py): onnxruntime's dynamic and static (QDQ) int8.

Static int8 follows onnxruntime's guidance: `quant_pre_process` first (compress/quant_tools.py; on a CNN with
TensorFlow-style "same" padding the padding subgraph stays untyped without it), then QDQ with per-channel weights
over the task's operators (text: weight MatMuls; image-classification: Conv, Gemm and the activations between
them). Where pre-processing fails (a fused transformer's com.microsoft ops), the model is quantized as it is and
the reason is logged and kept in the options.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compress import quant_cnn, quant_mixed, quant_tools
from compress.errors import StageError
from compress.quant_rules import kept_float


def int8_format(opts, options: dict) -> tuple:
    """(onnxruntime weight QuantType, reduce_range) from `opts` (quantize.Int8Options) and the CPU's features."""
    from onnxruntime.quantization import QuantType

    from compress.targets.cpu import cpu_info, pick_int8_format

    info = cpu_info()
    auto_type, auto_reduce, reason = pick_int8_format(info)
    weight_type = auto_type if opts.weight_type == "auto" else opts.weight_type
    reduce_range = auto_reduce if opts.reduce_range is None else opts.reduce_range
    auto = opts.weight_type == "auto" and opts.reduce_range is None
    chosen = "from the CPU" if auto else "partly set by the recipe"
    options.update(weight_type=weight_type, reduce_range=reduce_range, per_channel=opts.per_channel,
                   why=f"{reason} ({chosen}; cpu: {info['model']})")
    return (QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8), reduce_range


def int8_dynamic(opts, src: Path, dst: Path, options: dict, exclude=None, only=None) -> None:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    weight_type, reduce_range = int8_format(opts, options)
    options["op_types"] = opts.op_types or "all supported (MatMul, Attention, Gather...)"
    kept = kept_float(src, dst.parent, opts.keep_float)  # dst.parent holds the model's config.json
    options.update({"kept_float": kept} if kept else {})
    # DefaultTensorType: shape inference cannot type the fused graph's com.microsoft ops (onnx-notes).
    quantize_dynamic(src, dst, op_types_to_quantize=opts.op_types, per_channel=opts.per_channel,
                     nodes_to_exclude=list(exclude or []) + kept, nodes_to_quantize=list(only or []),
                     reduce_range=reduce_range, weight_type=weight_type,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def int8_portable(opts, src: Path, dst: Path, options: dict, exclude=None, only=None) -> None:
    """int8-dynamic in standard ONNX operators only: the fused graph rewritten back to plain operators
    (compress/unfuse.py), then DynamicQuantizeLinear + MatMulInteger for every weight MatMul (the packed
    attention weights too) and an int8 embedding table read by Gather + DequantizeLinear."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    weight_type, reduce_range = int8_format(opts, options)
    plain = standard_graph(src, options)
    kept = kept_float(plain, dst.parent, opts.keep_float)
    options.update({"kept_float": kept} if kept else {}, op_types=["MatMul", "Gather"],
                   why="standard ONNX operators only (loads in OpenVINO and other runtimes); " + options["why"])
    quantize_dynamic(plain, dst, op_types_to_quantize=["MatMul", "Gather"], per_channel=opts.per_channel,
                     nodes_to_exclude=list(exclude or []) + kept, nodes_to_quantize=list(only or []),
                     reduce_range=reduce_range, weight_type=weight_type,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    left = quant_tools.runtimes(onnx.load(str(dst), load_external_data=False))["nonstandard"]
    if left:
        raise StageError(f"int8-portable of {src.parent.name}: operators outside standard ONNX remain "
                         f"({', '.join(left[:5])}); use int8-dynamic or int8-static for this model")


def standard_graph(src: Path, options: dict, op_types=None) -> Path:
    """`src`, or beside it a copy with onnxruntime's fused transformer operators rewritten as standard ones
    (compress/unfuse.py): the quantizers then reach the embedding table and the packed QKV weights."""
    import onnx

    from compress.unfuse import FUSED, UnfuseError, unfuse

    nodes = onnx.load(str(src), load_external_data=False).graph.node  # an LLM's GBs of weights: not needed here
    if not any(n.domain == "com.microsoft" and n.op_type in (op_types or FUSED) for n in nodes):
        return src
    model = onnx.load(str(src))
    try:
        model = unfuse(model, op_types or FUSED)
    except UnfuseError as exc:
        raise StageError(f"quantizing {src.name}: its fused operators cannot be rewritten as standard ONNX "
                         f"({exc}); export with optimize: false") from None
    plain = src.with_name("model.unfused.onnx")
    onnx.save(model, str(plain))
    options["unfused"] = sorted(op_types or FUSED)
    return plain


def static_op_types(opts, task) -> list[str]:
    """The operators int8-static quantizes: the recipe's, else the task's (default: weight MatMuls)."""
    return list(opts.op_types or getattr(task, "STATIC_OP_TYPES", ["MatMul"]))


def int8_static(opts, ctx, source, src: Path, dst: Path, options: dict, exclude=None, only=None) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    weight_type, reduce_range = int8_format(opts, options)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    # Weight MatMuls only for text: QDQ over every op puts the attention mask (float32 min) through int8 (cosine
    # 0.36). A task may name others (image-classification: Conv, Gemm and the activations between them).
    op_types = static_op_types(opts, ctx.task)
    text = op_types == ["MatMul"]
    if text:  # the embedding table and the packed QKV weights are hidden inside fused operators: unfuse
        src = standard_graph(src, options)
        if opts.op_types is None:
            op_types = ["MatMul", "Gather"]
    prepared = src.with_name("model.pre.onnx")
    why_not = quant_tools.preprocess(src, prepared)
    if why_not is not None:
        logging.getLogger("compress.quantize").warning("quant_pre_process failed, quantizing without it: %s",
                                                       why_not)
    model = with_shapes(src) if why_not else onnx.load(str(prepared))
    excluded = after_gelu(model) if opts.skip_after_gelu else []
    counted: dict = {}

    def write(model, path: Path, calibration: str, per_channel: bool) -> None:
        reader = calibration_reader(ctx, source, opts.calibration_size, calibration != "minmax")
        counted["texts"] = reader.count
        quantize_static(model, path, reader, nodes_to_exclude=excluded + list(exclude or []),
                        nodes_to_quantize=list(only or []), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=weight_type, calibrate_method=methods[calibration],
                        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})

    calibration, per_channel = opts.calibration, opts.per_channel
    feeds: list = []  # the choices below are scored on training images: the held-out ones only report them
    if not text and quant_tools.conv_dominated(src):  # a CNN: equalize, then the calibration that keeps top-1
        search = opts.calibration_search if opts.calibration_search is not None else list(methods)
        mixed = opts.mixed.target > 0 and opts.mixed.max_kept > 0 and not exclude and not only
        feeds = search_feeds(ctx, source, opts.calibration_size) if ("cnn" not in options and search) or mixed \
            else []
        model, chosen, chosen_pc = quant_cnn.tune(
            model, write, src, feeds, search,
            True if opts.equalize is None else opts.equalize, dst.with_name("calibration-choices"), options)
        calibration = chosen or calibration
        per_channel = per_channel if chosen_pc is None else chosen_pc
    cnn = not text and "cnn" in options and not exclude and not only  # the accuracy search: its own choices
    if cnn:  # quantize_static may change the model it is given: the float one is needed after it
        frozen = onnx.ModelProto()
        frozen.CopyFrom(model)
    write(model, dst, calibration, per_channel)
    if cnn:  # the few tensors whose int8 costs the most agreement kept in float, scored on training images
        options["cnn"]["mixed"] = quant_mixed.search(dst, frozen, feeds if opts.mixed.target > 0 else [],
                                                     opts.mixed)
    options.update(format="QDQ", activation_type="uint8", op_types=op_types, calibration=calibration,
                   per_channel=per_channel, calibration_texts=counted.get("texts"), matmul_const_b_only=True,
                   float_after_gelu=len(excluded),
                   preprocess="quant_pre_process" if why_not is None else f"skipped: {why_not}",
                   why=("weight MatMuls (and the embedding table) only; GELU outputs' outliers kept in float (MiniLM "
                        "cosine 0.92 -> 0.99)"
                        if text else "onnxruntime's guidance: pre-processing, then QDQ over the task's operators "
                        "with per-channel weights" + ("; a CNN: cross-layer equalization and the calibration "
                                                      "with the best agreement on training images"
                                                      if "cnn" in options else "")))
    if excluded:
        options["size_note"] = (f"its {len(excluded)} MatMul(s) fed by GELU stay in float, as int8 their activation "
                                "outliers cost MiniLM 7 points of cosine (int8.skip_after_gelu: false trades that "
                                "quality for size)")


def search_feeds(ctx, source, size: int) -> list[dict]:
    """Up to `size` training-split images (the calibration images) as input batches: the calibration choice and the
    mixed-precision search are scored on them, so that the held-out images of the check and the bench stay out of
    every choice they make."""
    task = ctx.task
    images = task.examples(task.load_data(ctx.recipe.data).train)[:size]
    batches = task.inputs(source.path).batches(images, ctx.recipe.data.max_length, 32) if len(images) else []
    return [{k: v for k, v in b.items() if not k.startswith("_")} for b in batches]


def with_shapes(src: Path):
    """The model with symbolic shapes: plain ONNX shape inference cannot type the fused graph's
    com.microsoft ops, and quantize_static then silently leaves every activation in float."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True)


def after_gelu(model) -> list[str]:
    """MatMuls whose input comes from a GELU: a fused op, or the erf formula (Erf, Add, Mul, Mul)."""
    gelu = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Erf"}
    producer = {out: node for node in model.graph.node for out in node.output}

    def fed_by_gelu(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None or depth == 0 or node.op_type == "MatMul":
            return False
        return node.op_type in gelu or any(fed_by_gelu(i, depth - 1) for i in node.input)

    return [n.name for n in model.graph.node if n.op_type == "MatMul" and fed_by_gelu(n.input[0], 4)]


def calibration_reader(ctx, source, size: int, pad_to_max: bool):
    from onnxruntime.quantization import CalibrationDataReader

    task = ctx.task
    texts = task.examples(task.load_data(ctx.recipe.data).train)[:size]  # texts, or images
    if not len(texts):
        raise StageError(f"int8-static of {source.name}: no training texts to calibrate with "
                         "(see data.train_limit)")
    inputs = task.inputs(source.path)
    max_length = ctx.recipe.data.max_length
    step = min(16, len(texts))
    if pad_to_max:  # histogram calibrators stack tensors across batches: one shape for all, remainder dropped
        texts = texts[:len(texts) - len(texts) % step]
    batches = [inputs.encode(texts[i:i + step], max_length, pad_to_max) for i in range(0, len(texts), step)]

    class Reader(CalibrationDataReader):
        count = len(texts)

        def __init__(self):
            self._items = iter(batches)

        def get_next(self):
            return next(self._items, None)

        def rewind(self):
            self._items = iter(batches)

    return Reader()
