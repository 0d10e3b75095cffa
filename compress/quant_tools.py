"""ONNX graph work of the quantize stage, done as onnxruntime's own guidance says (layer: training : sensitivity).

- `preprocess`: onnxruntime's `quant_pre_process` (symbolic shape inference, graph optimization, ONNX shape
  inference) before static quantization. Without it onnxruntime cannot type the padding subgraph of a CNN with
  TensorFlow-style "same" padding (Shape/Slice/Pad), warns "Please consider to run pre-processing", and leaves
  more of the graph in float. Where it fails (a fused transformer's com.microsoft ops), the caller quantizes
  the model as it is and logs the one-line reason.
- `conv_share` / `conv_dominated`: how much of the weights are convolutions; dynamic int8 turns each Conv into
  ConvInteger, which onnxruntime's CPU kernels run about 5-11x slower than fp32.
- `to_fp16`: onnxruntime's float16 converter, made safe for graphs it breaks: IO types kept, the nodes that
  compute shapes (padding sizes, Reshape targets) kept in fp32, and the graph sorted topologically (the
  converter appends the input Casts after their consumers: "Nodes in a graph must be topologically sorted").
- `captured`: onnxruntime's and onnx's warnings, prints and protobuf dumps go to a log file, not the console.
- `op_domains` / `runtimes`: which operator sets a graph uses, and so which runtimes load it: standard ONNX
  only (any runtime), or com.microsoft operators, some of which only onnxruntime has (int8-dynamic's QAttention
  and QEmbedLayerNormalization: OpenVINO has no conversion rule for them).
"""

from __future__ import annotations

import contextlib
import heapq
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

# Inputs that carry shapes, sizes or indices, not data: what computes them stays in fp32 under fp16.
SHAPE_INPUTS = {"Pad": (1, 3), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3), "Expand": (1,),
                "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "TopK": (1,), "Upsample": (1,),
                "Unsqueeze": (1,), "Squeeze": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "Split": (1,),
                "OneHot": (1,)}
SHAPE_SOURCES = {"Shape", "Size"}  # where a shape computation starts: their input is data (any type)
CONV_DYNAMIC_SHARE = 0.5  # above this share of weights in Conv, int8-dynamic is not offered by default
# com.microsoft operators that OpenVINO 2026.4's ONNX frontend converts (measured on the fused tiny BERT and
# MiniLM bundles: fp32, fp16, int8-static and int4-weight load and compile on CPU). Any other non-standard
# operator (QAttention, QEmbedLayerNormalization, DynamicQuantizeMatMul, QGemm, ...) makes a graph
# onnxruntime-only.
OPENVINO_CONVERTS = {"com.microsoft": {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization",
                                       "BiasGelu", "FastGelu", "Gelu", "MatMulNBits", "GatherBlockQuantized"}}


def preprocess(src: Path, dst: Path) -> str | None:
    """`quant_pre_process(src) -> dst`; None when it worked, else why not (one line; dst is then absent)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), auto_merge=True)
    except Exception as exc:  # onnxruntime's tools raise anything: the caller falls back, logging the reason
        Path(dst).unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if not Path(dst).exists():
        return "quant_pre_process wrote no model"
    return None


def op_domains(model) -> dict[str, list[str]]:
    """{operator domain: sorted operator types} of a graph (and its subgraphs); the standard domain is "ai.onnx"."""
    found: dict[str, set[str]] = {}

    def visit(graph) -> None:
        for node in graph.node:
            found.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    visit(sub)

    visit(model.graph)
    return {domain: sorted(ops) for domain, ops in sorted(found.items())}


def runtimes(model) -> dict:
    """Where a graph runs, from its operators: {"standard_onnx": only ai.onnx operators, "nonstandard": the
    others as "domain.Op", "onnxruntime_only": those no other runtime we checked (OpenVINO) converts}."""
    domains = op_domains(model)
    nonstandard = [f"{d}.{op}" for d, ops in domains.items() if d != "ai.onnx" for op in ops]
    only = [f"{d}.{op}" for d, ops in domains.items() if d != "ai.onnx" for op in ops
            if op not in OPENVINO_CONVERTS.get(d, ())]
    return {"standard_onnx": not nonstandard, "nonstandard": nonstandard, "onnxruntime_only": only}


# Reduce operators whose `axes` attribute became an input in opset 18 (ReduceSum's in 13).
REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13, **{op: 18 for op in (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSumSquare")}}


def reduce_axes_as_inputs(model) -> int:
    """Move Reduce* operators' `axes` attribute to an input where the model's opset wants it there (onnxruntime's
    4-bit Gather quantizer raises an opset-17 model to 21 without converting its operators: "Unrecognized
    attribute: axes for operator ReduceL2"). Returns how many were moved."""
    import numpy as np
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    moved = 0
    for node in model.graph.node:
        since = REDUCE_AXES_INPUT_SINCE.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        axes = next((a for a in node.attribute if a.name == "axes"), None)
        if since is None or opset < since or axes is None:
            continue
        name = f"{node.name or node.op_type}_axes_{moved}"
        model.graph.initializer.append(numpy_helper.from_array(np.array(list(axes.ints), dtype=np.int64), name))
        node.attribute.remove(axes)
        if not node.input:
            raise ValueError(f"{node.name}: a {node.op_type} without a data input")
        node.input.append(name)
        moved += 1
    return moved


def conv_share(model) -> float:
    """Share of the weights (initializer elements) that Conv nodes hold, among Conv, MatMul and Gemm weights."""
    import numpy as np

    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    totals = {"Conv": 0, "Other": 0}
    for node in model.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            weight = sum(sizes.get(name, 0) for name in node.input[1:2])
            totals["Conv" if node.op_type == "Conv" else "Other"] += weight
    total = totals["Conv"] + totals["Other"]
    return totals["Conv"] / total if total else 0.0


def conv_dominated(model_path: Path) -> bool:
    import onnx

    return conv_share(onnx.load(str(model_path), load_external_data=False)) > CONV_DYNAMIC_SHARE


def shape_nodes(graph) -> list[str]:
    """Names of the nodes that only compute shapes: the producers of SHAPE_INPUTS, back to Shape/Size."""
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[str] = set()
    stack = [node.input[i] for node in graph.node for i in SHAPE_INPUTS.get(node.op_type, ())
             if i < len(node.input) and node.input[i]]
    found = []
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in SHAPE_SOURCES:
            continue
        found.append(node)
        stack.extend(i for i in node.input if i)
    names = []
    for index, node in enumerate(found):
        if not node.name:  # the converter blocks nodes by name
            node.name = f"compress_shape_node_{index}"
        names.append(node.name)
    return names


def sort_topologically(graph) -> bool:
    """Reorder graph.node so every input is produced before it is used (stable: the given order where it is
    valid). True when the order changed; ValueError on a cycle or an input nothing produces."""
    nodes = list(graph.node)
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    known |= {i.name for i in getattr(graph, "sparse_initializer", [])}
    produced_by = {out: index for index, node in enumerate(nodes) for out in node.output}
    needs = []
    for node in nodes:
        names = set(node.input) | _subgraph_inputs(node)
        needs.append({produced_by[n] for n in names if n not in known and n in produced_by})
    waiting = [len(n) for n in needs]
    users: dict[int, list[int]] = {}
    for index, deps in enumerate(needs):
        for dep in deps:
            users.setdefault(dep, []).append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for user in users.get(index, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        stuck = nodes[next(i for i, count in enumerate(waiting) if count)]
        raise ValueError(f"the graph has a cycle through node {stuck.name or stuck.op_type!r}")
    if order == list(range(len(nodes))):
        return False
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True


def _subgraph_inputs(node) -> set[str]:
    """Names a node's subgraphs (If, Loop, Scan) read from the enclosing graph."""
    names: set[str] = set()
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input}
            inner |= {i.name for i in sub.initializer}
            for n in sub.node:
                names |= {i for i in n.input if i and i not in inner} | _subgraph_inputs(n)
    return names


def to_fp16(model, convert=None) -> tuple:
    """(the model in float16 with float32 inputs and outputs, what was done). `convert` defaults to
    onnxruntime's converter (a parameter so that a test can hand in a broken one)."""
    if convert is None:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        def convert(m, node_block_list):
            return convert_float_to_float16(m, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                            node_block_list=node_block_list)
    blocked = shape_nodes(model.graph)
    model = convert(model, node_block_list=blocked)
    resorted = sort_topologically(model.graph)
    return model, {"keep_io_types": True, "fp32_shape_nodes": len(blocked), "resorted": resorted}


@contextlib.contextmanager
def captured(log_path: Path, title: str) -> Iterator[dict]:
    """Everything onnxruntime and onnx say while the block runs (Python logging, warnings, prints, and the C++
    side's writes to file descriptors 1 and 2) goes to `log_path` (appended, under a `title` line). Yields a
    dict whose "lines" says, after the block, how many lines were written."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = {"lines": 0, "log": log_path}
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"--- {title}\n")
        log.flush()
        start = log.tell()
        sys.stdout.flush()
        sys.stderr.flush()
        saved = []
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(log.fileno(), fd)
            except OSError:  # no such descriptor (an embedding host): Python-level capture still works
                pass
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        root.handlers[:] = [handler]
        root.setLevel(logging.WARNING)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                warnings.simplefilter("always")
                warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
                    warnings.formatwarning(message, category, filename, lineno, line))
                yield result
        finally:
            handler.flush()
            log.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            root.handlers[:] = handlers
            root.setLevel(level)
            log.seek(0, io.SEEK_END)
            end = log.tell()
    if end > start:
        with open(log_path, encoding="utf-8", errors="replace") as read:
            read.seek(start)
            result["lines"] = sum(1 for line in read if line.strip())


def recipe_notes(recipe) -> list[str]:
    """What `compress validate` says about a recipe's quantization choices, one sentence each (no imports)."""
    notes = []
    for index, stage in enumerate(recipe.stages):
        schemes = getattr(stage, "schemes", None) or []
        if getattr(stage, "kind", None) == "quantize" and recipe.task == "image-classification" \
                and "int8-dynamic" in schemes:
            notes.append(f"stages[{index}]: int8-dynamic turns a CNN's convolutions into ConvInteger, which "
                         "onnxruntime's CPU kernels run about 5-11x slower than fp32; int8-static is the scheme "
                         "for convolutional models (the default when schemes is not set).")
        if getattr(stage, "kind", None) == "quantize" and "int8-dynamic" in schemes and _benches_on_cuda(recipe):
            notes.append(f"stages[{index}]: int8-dynamic on the CUDA provider ran 20x slower than fp32 at batch 1 "
                         "and 300x at batch 32 on an H200 (bench/results/2026-11-30-h200-gpu.md; most likely its "
                         "quantized MatMuls running on the CPU); fp16 is the scheme for a GPU.")
    return notes


def _benches_on_cuda(recipe) -> bool:
    """Whether a bench stage names the CUDA provider (`cuda`, `CUDAExecutionProvider` or `{cuda: {...}}`)."""
    names = [next(iter(spec)) if isinstance(spec, dict) else spec
             for stage in recipe.stages if getattr(stage, "kind", None) == "bench"
             for spec in getattr(stage, "providers", None) or []]
    return any(str(name).lower() in ("cuda", "cudaexecutionprovider") for name in names)
