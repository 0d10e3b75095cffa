"""Graph surgery for a user's ONNX model (compress/tasks/onnx_input.py decides what to do, this does it): give
the graph compress's interface (int64 input_ids/attention_mask, or pixel_values, in; the task's output out)
without touching what it computes. Plain onnx.helper nodes, valid from opset 11 on.
"""

from __future__ import annotations

from pathlib import Path

MAX_INLINE_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with room: larger models keep external data


def adapt(model_path: Path, plan, output_name: str, input_names: tuple, dest: Path) -> None:
    """Write the adapted model to `dest` (model.onnx, external data in model.onnx.data when large)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path), load_external_data=True)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    nodes: list = []  # prepended, in order
    inputs = {v.name: v for v in graph.input}

    def rename_uses(old: str, new: str) -> None:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        for out in graph.output:
            if out.name == old:
                out.name = new

    for name in plan.int32_inputs:  # int64 outside, the graph's own int32 inside
        rename_uses(name, f"{name}__int32")
        nodes.append(helper.make_node("Cast", [name], [f"{name}__int32"], to=TensorProto.INT32, name=f"{name}_cast"))
        inputs[name].type.tensor_type.elem_type = TensorProto.INT64
    if plan.token_type_ids:  # zeros like input_ids: one segment per text
        graph.input.remove(inputs["token_type_ids"])
        dtype = TensorProto.INT32 if "token_type_ids" in plan.int32_inputs else TensorProto.INT64
        target = "token_type_ids__int32" if "token_type_ids" in plan.int32_inputs else "token_type_ids"
        if "token_type_ids" in plan.int32_inputs:
            nodes = [n for n in nodes if n.output[0] != "token_type_ids__int32"]
        nodes += [helper.make_node("Shape", ["input_ids"], ["compress_ids_shape"], name="compress_ids_shape"),
                  helper.make_node("ConstantOfShape", ["compress_ids_shape"], [target], name="compress_token_types",
                                   value=helper.make_tensor("zero", dtype, [1], [0]))]
    if plan.add_mask:
        graph.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]))
    if plan.image_input and plan.image_input != "pixel_values":
        inputs[plan.image_input].name = "pixel_values"
        rename_uses(plan.image_input, "pixel_values")
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + kept)
    # Declared graph inputs in compress's order (input_ids, attention_mask / pixel_values).
    ordered = sorted(graph.input, key=lambda v: input_names.index(v.name) if v.name in input_names else 99)
    del graph.input[:]
    graph.input.extend(ordered)

    result = plan.output
    tail = _pooling(plan, result, opset) if plan.pooling else []
    if tail:
        result = tail[-1].output[0]
    if plan.normalize:
        tail.append(helper.make_node("LpNormalization", [result], ["compress_normalized"], axis=1, p=2,
                                     name="compress_normalize"))
        result = "compress_normalized"
    if result != output_name:
        if any(out.name == output_name for out in graph.output) or any(output_name in n.output for n in graph.node):
            # The graph already uses the name elsewhere: free it first.
            rename_uses(output_name, f"{output_name}__graph")
            for node in graph.node:
                for i, name in enumerate(node.output):
                    if name == output_name:
                        node.output[i] = f"{output_name}__graph"
            result = f"{output_name}__graph" if result == output_name else result
        tail.append(helper.make_node("Identity", [result], [output_name], name="compress_output"))
    graph.node.extend(tail)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", "dim"]))
    del graph.value_info[:]  # stale after renames; onnxruntime infers what it needs
    onnx.checker.check_model(model)
    dest = Path(dest)
    large = model.ByteSize() > MAX_INLINE_BYTES if _inline(model) else True
    if large:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{dest.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dest))


def _inline(model) -> bool:
    """Whether every initializer's data is held in the proto (so ByteSize measures the whole model)."""
    return all(not t.external_data for t in model.graph.initializer)


def _pooling(plan, hidden: str, opset: int) -> list:
    """Nodes pooling token states [batch, sequence, dim] into [batch, dim] with the attention mask."""
    from onnx import TensorProto, helper

    def const(name: str, values, dtype=TensorProto.INT64) -> object:
        return helper.make_node("Constant", [], [name], name=name,
                                value=helper.make_tensor(name, dtype, [len(values)], values))

    def reduce(op: str, source: str, out: str, axis: int, keepdims: int = 0) -> list:
        if op == "ReduceSum" and opset >= 13 or opset >= 18:
            return [const(f"{out}_axes", [axis]),
                    helper.make_node(op, [source, f"{out}_axes"], [out], keepdims=keepdims, name=out)]
        return [helper.make_node(op, [source], [out], axes=[axis], keepdims=keepdims, name=out)]

    if plan.pooling == "cls":  # a scalar index: Gather drops the sequence axis
        index = helper.make_node("Constant", [], ["compress_cls_index"], name="compress_cls_index",
                                 value=helper.make_tensor("compress_cls_index", TensorProto.INT64, [], [0]))
        return [index, helper.make_node("Gather", [hidden, "compress_cls_index"], ["compress_pooled"], axis=1,
                                        name="compress_pooled")]
    nodes = [helper.make_node("Cast", ["attention_mask"], ["compress_mask_f"], to=TensorProto.FLOAT,
                              name="compress_mask_f")]
    if opset >= 13:
        nodes += [const("compress_mask_axes", [2]),
                  helper.make_node("Unsqueeze", ["compress_mask_f", "compress_mask_axes"], ["compress_mask_3d"],
                                   name="compress_mask_3d")]
    else:
        nodes.append(helper.make_node("Unsqueeze", ["compress_mask_f"], ["compress_mask_3d"], axes=[2],
                                      name="compress_mask_3d"))
    if plan.pooling == "max":  # padding positions pushed to -1e9 so that they never win
        nodes += [const("compress_one", [1.0], TensorProto.FLOAT), const("compress_big", [1e9], TensorProto.FLOAT),
                  helper.make_node("Sub", ["compress_mask_3d", "compress_one"], ["compress_mask_neg"],
                                   name="compress_mask_neg"),
                  helper.make_node("Mul", ["compress_mask_neg", "compress_big"], ["compress_mask_pen"],
                                   name="compress_mask_pen"),
                  helper.make_node("Add", [hidden, "compress_mask_pen"], ["compress_masked"], name="compress_masked")]
        return nodes + reduce("ReduceMax", "compress_masked", "compress_pooled", 1)
    nodes.append(helper.make_node("Mul", [hidden, "compress_mask_3d"], ["compress_masked"], name="compress_masked"))
    nodes += reduce("ReduceSum", "compress_masked", "compress_summed", 1)
    nodes += reduce("ReduceSum", "compress_mask_3d", "compress_count", 1)
    nodes += [helper.make_node("Constant", [], ["compress_eps"], name="compress_eps",
                               value=helper.make_tensor("compress_eps", TensorProto.FLOAT, [], [1e-9])),
              helper.make_node("Clip", ["compress_count", "compress_eps"], ["compress_count_min"],
                               name="compress_count_min"),  # not Max: fp16 conversion keeps Max in fp32
              helper.make_node("Div", ["compress_summed", "compress_count_min"], ["compress_pooled"],
                               name="compress_pooled")]
    return nodes


def check_runs(bundle: Path, task, how) -> None:
    """Run the bundle once on a sample (`how`: the onnx_input.Plan): a graph that cannot run fails here, with one
    sentence."""
    import numpy as np
    import onnxruntime as ort

    from compress.artifacts import model_file
    from compress.errors import SourceError
    from compress.tasks import common

    try:
        if task.INPUT_NAMES == ("pixel_values",):
            dims = [how.fixed_axes.get(axis, default) for axis, default in
                    zip(("batch", "channels", "height", "width"), (1, 3, 32, 32))]
            feeds = {"pixel_values": np.random.default_rng(0).random(dims, dtype=np.float32)}
        else:
            length = how.fixed_axes.get("sequence")
            texts = ["a short example"] * how.fixed_axes.get("batch", 1)
            feeds = common.tokenize(common.load_tokenizer(bundle), texts, length or 16, pad_to_max=bool(length))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_file(bundle)), options, providers=["CPUExecutionProvider"])
        out = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    except Exception as exc:  # onnxruntime raises its own types: the user needs one sentence
        raise SourceError(f"the ONNX model does not run on a sample input ({first_line(exc)})") from None
    if out.ndim != 2:
        raise SourceError(f"the ONNX model's {how.output} gives shape {list(out.shape)}, not [batch, dim]; set "
                          f"teacher.output (and teacher.pooling for token states)")


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def sort_nodes(model) -> None:
    """Put the graph's nodes in topological order, in place (onnxruntime's fp16 converter appends the casts it
    adds around ops it keeps in fp32, such as Max or Range, after their consumers)."""
    graph = model.graph
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:  # a cycle, or inputs from an outer scope: leave the rest as it was
            ordered += pending
            break
        for node in progress:
            ready.update(node.output)
        ordered += progress
        done = {id(n) for n in progress}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)
