"""A user's own ONNX model as the teacher: read what the graph takes and gives, check it against the task, and
write it as an ONNX bundle (the layout the export stage writes) that quantize, bench and the reports take.

Sources: an `.onnx` file, a folder holding `model.onnx` (or `onnx/model.onnx`) and tokenizer files,
`package:<pkg>/<path>` to either, or a hub repo that ships ONNX (from the local cache offline). Every bundle gets
one interface: int64 `input_ids`, `attention_mask` (text) or float `pixel_values` (images) in, the task's output
out. The output is chosen by what it is (issue 34): float only; [batch, sequence, hidden] is token states (pooled
inside the graph: teacher.pooling, else a `1_Pooling/config.json` beside it, else mean; normalised as its
modules.json says), [batch, n] an embedding or logits as the task says; names break ties; teacher.output always
wins. token_type_ids becomes zeros inside the graph, int32 inputs are cast, fixed axes are kept and recorded
(`fixed_axes`). What does not fit the task is a SourceError naming what was found and the key to set; which task
a graph fits is compress/tasks/onnx_guess.py's."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import SourceError
from compress.tasks import common

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_INPUT = "pixel_values"
POOLINGS = ("mean", "cls", "max")
EMBEDDING_OUTPUTS = ("sentence_embedding", "sentence_embeddings", "embedding", "embeddings", "text_embeds")
TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings", "hidden_states")
LOGIT_OUTPUTS = ("logits", "output", "outputs", "probabilities")
CLASSIFIER_OUTPUTS = ("logits", "probabilities")  # names that say "classes" (output/outputs say nothing)
POOLER_OUTPUTS = ("pooler_output",)  # BERT's CLS + dense + tanh: not what sentence-transformers pools
KEY_OUTPUT, KEY_POOLING = "teacher.output", "teacher.pooling"
EXTERNAL_DATA = "model.onnx.data"  # what quantize copies beside model.onnx
CARD_FILES = ("README.md", "LICENSE", "LICENSE.txt", "LICENSE.md")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model")
INT64, INT32, FLOAT = 7, 6, 1  # onnx.TensorProto element types
DTYPES = {1: "float", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
          11: "double", 16: "bfloat16"}


@dataclass(frozen=True)
class Tensor:
    name: str
    elem_type: int
    dims: tuple  # int for a fixed axis, str (or None) for a dynamic one

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def dtype(self) -> str:
        return DTYPES.get(self.elem_type, f"type {self.elem_type}")

    @property
    def role(self) -> str | None:
        """What a float output is by its shape: token states [batch, sequence, hidden] or a pooled vector
        [batch, n] (an embedding or logits, as the task says); None for anything else (int outputs never serve)."""
        if self.elem_type != FLOAT:
            return None
        return {3: "token states", 2: "pooled"}.get(self.rank)

    def describe(self) -> str:
        shape = ", ".join(str(d) if d is not None else "?" for d in self.dims)
        return f"{self.name} [{shape}]"

    def describe_typed(self) -> str:
        shape = ", ".join(str(d) if d is not None else "?" for d in self.dims)
        return f"{self.name} {self.dtype} [{shape}]"


@dataclass(frozen=True)
class GraphInfo:
    path: Path
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    opset: int

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> Tensor | None:
        return next((t for t in self.outputs if t.name == name), None)


@dataclass
class Plan:
    """How the graph becomes a bundle: which output, how to pool, which axes are fixed."""

    output: str
    pooling: str | None = None  # None: the output is used as it is
    normalize: bool = False
    token_type_ids: bool = False
    int32_inputs: list[str] = field(default_factory=list)
    add_mask: bool = False  # pooling needs attention_mask, the graph has none
    image_input: str | None = None  # the graph's name of the image input
    fixed_axes: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- finding the model


def find_model(path: Path) -> Path | None:
    """The .onnx file of an ONNX source (a file, or a folder with model.onnx / onnx/model.onnx); None otherwise."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix == ".onnx" else None
    for candidate in (path / "model.onnx", path / "onnx" / "model.onnx"):
        if candidate.is_file():
            return candidate
    return None


def is_onnx_source(path: Path) -> bool:
    """An .onnx file, or a folder with model.onnx and no PyTorch weights beside it (those win: they distill)."""
    path = Path(path)
    model = find_model(path)
    if model is None:
        return False
    if path.is_file():
        return True
    weights = [p for p in path.iterdir() if p.name.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    return not weights


def tokenizer_dir(model: Path) -> Path | None:
    """The folder holding the tokenizer: beside the model, or its parent (hub repos keep onnx/model.onnx)."""
    for folder in (model.parent, model.parent.parent):
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    return None


# ---------------------------------------------------------------- reading the graph


def inspect(path: Path) -> GraphInfo:
    """Inputs, outputs and opset of an ONNX file; a file that is not ONNX is a SourceError."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: one sentence
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"{path}: not an ONNX model (it does not parse as one: {reason})") from None
    graph = model.graph
    if not graph.node or not graph.output:
        raise SourceError(f"{path}: not an ONNX model (no graph nodes or outputs)")
    initializers = {i.name for i in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inputs = tuple(_tensor(v) for v in graph.input if v.name not in initializers)
    return GraphInfo(path, inputs, tuple(_tensor(v) for v in graph.output), opset)


def _tensor(value) -> Tensor:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return Tensor(value.name, tensor.elem_type, dims)


def _found(info: GraphInfo) -> str:
    return (f"inputs {', '.join(t.describe() for t in info.inputs) or 'none'}; "
            f"outputs {', '.join(t.describe_typed() for t in info.outputs)}")


# ---------------------------------------------------------------- checking it against the task


def plan(info: GraphInfo, task: str, output: str | None = None, pooling: str | None = None,
         config_dir: Path | None = None) -> Plan:
    """How `info`'s graph serves `task`; a SourceError naming what was found and the key to set otherwise."""
    if task == "causal-lm":
        raise SourceError(f"{info.path}: an ONNX model as the teacher of task causal-lm is not supported (generation "
                          "needs past key/values wiring); give the Hugging Face model folder or GGUF file instead")
    if pooling is not None and pooling not in POOLINGS:
        raise SourceError(f"{KEY_POOLING}: {pooling!r} is not one of {', '.join(POOLINGS)}")
    result = _plan_image(info, task) if task == "image-classification" else _plan_text(info, task)
    result.output = _pick_output(info, task, output)
    out = info.output(result.output)
    what = ("logits" if task != "sentence-embedding" else "token states" if out.rank == 3 else "an embedding")
    result.notes.append(f"output {out.describe_typed()}: {what} ("
                        + (f"{KEY_OUTPUT}" if output is not None else "chosen by its dtype, shape and name") + ")")
    if task == "sentence-embedding":
        _plan_pooling(info, result, out, pooling, config_dir)
    elif out.rank != 2:
        raise SourceError(f"{info.path}: output {out.describe()} is not [batch, classes] logits, which {task} "
                          f"needs ({_found(info)}); set {KEY_OUTPUT}: <the logits output>")
    elif pooling is not None:
        raise SourceError(f"{KEY_POOLING} applies to sentence-embedding only (this recipe's task: {task})")
    return result


def _plan_text(info: GraphInfo, task: str) -> Plan:
    names = [t.name for t in info.inputs]
    if "input_ids" not in names:
        if IMAGE_INPUT in names or (len(info.inputs) == 1 and info.inputs[0].rank == 4):
            raise SourceError(f"{info.path}: the graph takes images ({_found(info)}), not text; set task: "
                              f"image-classification (this recipe's task: {task})")
        raise SourceError(f"{info.path}: no recognisable inputs ({_found(info)}); a text model must take input_ids "
                          "(and attention_mask, token_type_ids): re-export it with those input names")
    unknown = [n for n in names if n not in TEXT_INPUTS]
    if unknown:
        raise SourceError(f"{info.path}: input {unknown[0]!r} is not one compress can feed ({_found(info)}); a text "
                          f"model takes {', '.join(TEXT_INPUTS)}")
    result = Plan(output="")
    ids = info.input("input_ids")
    if ids.rank != 2:
        raise SourceError(f"{info.path}: input_ids should be [batch, sequence], found {ids.describe()}")
    for tensor in info.inputs:
        if tensor.elem_type == INT32:
            result.int32_inputs.append(tensor.name)
        elif tensor.elem_type != INT64:
            raise SourceError(f"{info.path}: input {tensor.describe()} is not an integer tensor (type "
                              f"{tensor.elem_type}); token inputs must be int64 or int32")
    result.token_type_ids = "token_type_ids" in names
    result.fixed_axes = {axis: d for axis, d in zip(("batch", "sequence"), ids.dims) if isinstance(d, int) and d > 0}
    return result


def _plan_image(info: GraphInfo, task: str) -> Plan:
    if info.input("input_ids") is not None:
        raise SourceError(f"{info.path}: the graph takes text ({_found(info)}), not images; set task: "
                          "sentence-embedding or text-classification (this recipe's task: image-classification)")
    image = info.input(IMAGE_INPUT) or (info.inputs[0] if len(info.inputs) == 1 else None)
    if image is None or image.rank != 4 or len(info.inputs) != 1:
        raise SourceError(f"{info.path}: no recognisable inputs ({_found(info)}); an image model must take one "
                          f"float tensor {IMAGE_INPUT} [batch, channels, height, width]")
    if image.elem_type != FLOAT:
        raise SourceError(f"{info.path}: input {image.describe()} is not float32 (type {image.elem_type}); "
                          f"compress feeds {IMAGE_INPUT} as float32 in [0, 1]")
    fixed = {axis: d for axis, d in zip(("batch", "channels", "height", "width"), image.dims)
             if isinstance(d, int) and d > 0}
    return Plan(output="", image_input=image.name, fixed_axes=fixed)


def _pick_output(info: GraphInfo, task: str, output: str | None) -> str:
    """The output that serves `task`, chosen by what each output is (float only; [batch, sequence, hidden] token
    states; [batch, n] an embedding or logits as the task says), names breaking ties; `output` always wins."""
    names = [t.name for t in info.outputs]
    if output is not None:
        chosen = info.output(str(output))
        if chosen is None:
            raise SourceError(f"{KEY_OUTPUT}: the graph has no output {output!r} (outputs: {', '.join(names)})")
        if chosen.elem_type != FLOAT:
            raise SourceError(f"{KEY_OUTPUT}: output {chosen.describe_typed()} is not float32, so it is neither "
                              f"embeddings nor logits ({_found(info)}); set {KEY_OUTPUT} to a float output")
        return chosen.name
    floats = [t for t in info.outputs if t.role]
    if task == "sentence-embedding":
        named = [t for name in EMBEDDING_OUTPUTS + TOKEN_OUTPUTS for t in floats if t.name == name]
        if named:
            return named[0].name
        candidates = [t for t in floats if t.name not in CLASSIFIER_OUTPUTS]  # "output" says nothing either way
        # A pooled vector the graph computes (its own pooling, Dense and normalisation) before token states that
        # compress would pool; BERT's pooler_output is no sentence embedding: token states first.
        groups = ([t for t in candidates if t.role == "pooled" and t.name not in POOLER_OUTPUTS],
                  [t for t in candidates if t.role == "token states"],
                  [t for t in candidates if t.role == "pooled"])
        if not candidates and floats:
            raise SourceError(f"{info.path}: the graph outputs logits ({_found(info)}), a classifier's output, not "
                              f"embeddings; set task: text-classification, or {KEY_OUTPUT}: <an embedding output>")
    else:
        named = [t for name in LOGIT_OUTPUTS for t in floats if t.name == name and t.role == "pooled"]
        if named:
            return named[0].name
        embedding_names = EMBEDDING_OUTPUTS + TOKEN_OUTPUTS + POOLER_OUTPUTS
        groups = ([t for t in floats if t.role == "pooled" and t.name not in embedding_names],)
        if not groups[0] and any(t.name in embedding_names or t.role == "token states" for t in floats):
            raise SourceError(f"{info.path}: the graph outputs embeddings or token states ({_found(info)}), not "
                              f"logits; {task} needs a classifier head: set task: sentence-embedding, or "
                              f"{KEY_OUTPUT}: <the logits output>")
    group = next((g for g in groups if g), [])
    if len(group) == 1:
        return group[0].name
    if len(group) > 1:
        raise SourceError(f"{info.path}: {len(group)} outputs could be what {task} needs "
                          f"({', '.join(t.describe_typed() for t in group)}); set {KEY_OUTPUT}: <one of "
                          f"{', '.join(t.name for t in group)}>")
    if not floats:
        raise SourceError(f"{info.path}: no output is a float32 tensor ({_found(info)}); {task} needs "
                          "embeddings or logits as float32: re-export the model with such an output")
    raise SourceError(f"{info.path}: none of the outputs is recognisably what {task} needs ({_found(info)}); set "
                      f"{KEY_OUTPUT}: <one of {', '.join(names)}>")


def _plan_pooling(info: GraphInfo, result: Plan, out: Tensor, pooling: str | None, config_dir: Path | None) -> None:
    st = _sentence_transformers(config_dir)
    if out.rank == 2:
        if pooling is not None:
            raise SourceError(f"{info.path}: output {out.describe()} is already pooled; remove {KEY_POOLING} or "
                              f"set {KEY_OUTPUT}: <a token-states output>")
        return
    if out.rank != 3:
        raise SourceError(f"{info.path}: output {out.describe()} is neither [batch, dim] embeddings nor [batch, "
                          f"sequence, dim] token states ({_found(info)}); set {KEY_OUTPUT}: <another output>")
    if st["dense"]:
        raise SourceError(f"{info.path}: the sentence-transformers config beside it has a Dense layer that the graph "
                          f"output {out.name} does not include; export the model with its sentence_embedding output "
                          "(or give its PyTorch folder)")
    result.pooling = pooling or st["pooling"]
    result.normalize = st["normalize"]
    result.add_mask = result.pooling in ("mean", "max") and info.input("attention_mask") is None
    source = "teacher.pooling" if pooling else ("1_Pooling/config.json" if st["configured"] else "the default")
    result.notes.append(f"{out.name} pooled by {result.pooling} ({source})"
                        + (", then L2-normalised (modules.json)" if result.normalize else ""))


def _sentence_transformers(folder: Path | None) -> dict:
    """Pooling, normalisation and Dense layers from a sentence-transformers config in `folder`."""
    from compress.tasks.sentence_embedding import pooling_config

    if folder is None:
        return {"pooling": "mean", "normalize": True, "dense": False, "configured": False}
    config = pooling_config(folder)
    return {"pooling": config["pooling"], "normalize": config["normalize"], "dense": bool(config.get("dense")),
            "configured": (folder / "1_Pooling" / "config.json").is_file()}


# ---------------------------------------------------------------- the bundle


def write_bundle(source: Path, dest: Path, task_name: str, output: str | None = None, pooling: str | None = None,
                 max_length: int | None = None) -> dict:
    """Write the ONNX model at `source` (file or folder) as a bundle in the new folder `dest`; returns what
    compress.json says about it (inputs, output, pooling, fixed axes, the graph as found)."""
    from compress.tasks import get_task
    from compress.tasks.onnx_graph import adapt, check_runs, first_line

    model = find_model(source)
    if model is None:
        raise SourceError(f"{source}: no ONNX model (an .onnx file, or a folder holding model.onnx)")
    info = inspect(model)
    task = get_task(task_name)
    text = task_name != "image-classification"
    tokenizer = tokenizer_dir(model) if text else None
    if text and tokenizer is None:
        raise SourceError(f"{model}: no tokenizer beside the model (tokenizer.json or vocab.txt and "
                          "tokenizer_config.json); put the tokenizer files in the folder that holds model.onnx")
    how = plan(info, task_name, output, pooling, tokenizer)
    dest.mkdir(parents=True)
    try:
        adapt(model, how, task.OUTPUT_NAME, tuple(task.INPUT_NAMES), dest / "model.onnx")
    except SourceError:
        raise
    except Exception as exc:  # onnx's checker or a graph we cannot rewrite: one sentence, not a traceback
        raise SourceError(f"{model}: cannot adapt the graph ({first_line(exc)})") from None
    for folder in {p for p in (tokenizer, model.parent) if p is not None}:
        common.copy_bundle_files(folder, dest)
        for name in CARD_FILES:
            if (folder / name).is_file() and not (dest / name).exists():
                shutil.copy2(folder / name, dest / name)
    labels = _labels(dest / "config.json") if task_name != "sentence-embedding" else []
    details = {"task": task_name, "output": task.OUTPUT_NAME, "inputs": list(task.INPUT_NAMES), "precision": "fp32",
               "onnx_input": {"file": model.name, "output": how.output, "inputs": [t.describe() for t in info.inputs],
                              "outputs": [t.describe_typed() for t in info.outputs], "opset": info.opset,
                              "notes": how.notes},
               "fixed_axes": how.fixed_axes}
    if task_name == "sentence-embedding":
        details.update(pooling=how.pooling or "in the graph", normalize=how.normalize)
    if labels:
        details["labels"] = labels
    if text:
        details["max_length"] = how.fixed_axes.get("sequence", max_length)
    common.write_json(dest / "compress.json", details)
    check_runs(dest, task, how)
    return details


def _labels(config: Path) -> list[str]:
    id2label = common.read_json(config).get("id2label") or {}
    try:
        return [id2label[k] for k in sorted(id2label, key=int)]
    except ValueError:
        return []


def onnx_teacher(source: str, revision: str | None = None) -> Path | None:
    """The local file or folder of `source` when it is an ONNX model (a hub repo: from the local cache only);
    None when it is something else (a PyTorch model, a factory, a GGUF file) or not found here."""
    from compress.sources import looks_like_hub_id, resolve_local

    if source.startswith("python:"):
        return None
    try:
        local = resolve_local(source)
    except SourceError:
        return None
    if local is None and looks_like_hub_id(source):
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(source, revision=revision, local_files_only=True))
        except Exception:  # not cached (or no huggingface_hub): it is resolved, or refused, when the run starts
            return None
    return local if local is not None and is_onnx_source(local) else None


PYTORCH_ONLY = ("stages[{index}] ({kind}) needs a PyTorch teacher (a Hugging Face model folder, hub id or python: "
                "factory), but teacher.source is an ONNX model, which quantize and bench take as it is")
