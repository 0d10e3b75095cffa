"""Pieces shared by the transformer tasks: tokenizing, batching, their input hook, copying tokenizer files."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask")
# Files that make a model folder usable without the original: tokenizer and sentence-transformers config.
BUNDLE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "merges.txt",
    "config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
)
BUNDLE_DIRS = ("1_Pooling", "2_Dense", "2_Normalize", "3_Normalize")  # 2_Dense: a projection head


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    # Explicit False: with None, transformers asks on a terminal (and waits) before running a model's code.
    with model_load_errors(path):
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


@contextlib.contextmanager
def model_load_errors(path: Path) -> Iterator[None]:
    """transformers' refusals (remote code not trusted, a pickle that weights_only=True rejects, a corrupt
    weights file) as SourceErrors that say what to do, instead of tracebacks."""
    from compress.errors import SourceError
    from compress.sources import remote_code_error

    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise remote_code_error(path, exc) from None
        raise
    except OSError as exc:
        if "Unable to load weights" in str(exc) or "Error while deserializing" in str(exc):
            raise SourceError(
                f"{path}: cannot load the model's weights: the file is corrupt, or a pickle that "
                "torch.load(weights_only=True) refuses because it would run code"
            ) from None
        raise


HEAD_KEYS = ("pooler", "classifier", "score", "lm_head", "position_ids")  # made fresh when missing, by design


def loaded(path: Path, result):
    """The model of from_pretrained(..., output_loading_info=True); weights missing from the checkpoint (layers
    transformers would fill with random values, which then fail export parity in another process) are a
    SourceError naming them. A missing pooler or classification head is expected and fine."""
    from compress.errors import SourceError

    model, info = result
    missing = [k for k in info.get("missing_keys", []) if not any(part in k for part in HEAD_KEYS)]
    if missing:
        shown = ", ".join(sorted(missing)[:3])
        raise SourceError(f"{path}: the checkpoint lacks {len(missing)} of the model's weights ({shown}"
                          f"{', ...' if len(missing) > 3 else ''}); the weights file is incomplete or from another "
                          "model: copy the whole model folder")
    return model


def tokenize(tokenizer, texts: list[str], max_length: int, pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """Tokenize to int64 numpy arrays: padded to the longest text, or to `max_length` exactly."""
    encoded = tokenizer(
        list(texts),
        padding="max_length" if pad_to_max else "longest",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {name: encoded[name].astype(np.int64) for name in INPUT_NAMES}


def batches(tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Eval batches, sorted by length so padding stays small; `order` restores the input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenize(tokenizer, [texts[i] for i in idx], max_length)
        batch["_index"] = np.asarray(idx, dtype=np.int64)
        out.append(batch)
    return out


def unbatch(outputs: list[np.ndarray], eval_batches: list[dict]) -> np.ndarray:
    """Put per-batch outputs back in the original text order."""
    index = np.concatenate([b["_index"] for b in eval_batches])
    # A batch filled up to a fixed batch size gives more rows than it has examples: keep the real ones.
    stacked = np.concatenate([out[:len(b["_index"])] for out, b in zip(outputs, eval_batches)])
    result = np.empty_like(stacked)
    result[index] = stacked
    return result


def pad(ids: list[list[int]], index: list[int], pad_id: int) -> dict:
    """Token id lists `ids[i]` for i in `index`, right-padded into input_ids and attention_mask tensors."""
    import torch

    rows = [ids[i] for i in index]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def copy_bundle_files(model_dir: Path, dest: Path) -> None:
    """Copy tokenizer and pooling config next to an exported model, so the bundle stands alone."""
    for name in BUNDLE_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / name)
    modules = read_json(model_dir / "modules.json") if (model_dir / "modules.json").is_file() else []
    listed = tuple(m["path"] for m in modules if isinstance(m, dict) and m.get("path")) if isinstance(modules, list) else ()
    for name in dict.fromkeys(BUNDLE_DIRS + listed):  # 1_Pooling, Dense and Normalize folders
        if (model_dir / name).is_dir() and Path(name).name == name:
            shutil.copytree(model_dir / name, dest / name, dirs_exist_ok=True)


def align_max_length(folder: Path, max_length: int, sentence_transformers: bool = False) -> int:
    """Write one max length into every config file of the bundle in `folder` (tokenizer.json truncation,
    tokenizer_config.json model_max_length, sentence_bert_config.json max_seq_length; compress.json is the caller's)
    and let tokenizer.json pad to the longest text of a batch, not to a fixed length (hub tokenizers such as
    all-MiniLM-L6-v2's pad every text to 128 tokens: a short sentence then costs 10x the time, and int8 outputs
    shift with the padding). Capped at the model's max_position_embeddings; returns the length written."""
    folder = Path(folder)
    positions = read_json(folder / "config.json").get("max_position_embeddings")
    length = min(max_length, positions) if isinstance(positions, int) and positions > 0 else max_length
    tokenizer = read_json(folder / "tokenizer.json")
    if tokenizer:
        truncation = tokenizer.get("truncation") or {"strategy": "LongestFirst", "stride": 0, "direction": "Right"}
        tokenizer["truncation"] = {**truncation, "max_length": length}
        if tokenizer.get("padding"):
            tokenizer["padding"] = {**tokenizer["padding"], "strategy": "BatchLongest"}
        # Not write_json: sorting the keys would reorder the vocabulary in the file for nothing.
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
    if (folder / "tokenizer_config.json").is_file():
        write_json(folder / "tokenizer_config.json",
                   {**read_json(folder / "tokenizer_config.json"), "model_max_length": length})
    if sentence_transformers or (folder / "sentence_bert_config.json").is_file():
        base = {"do_lower_case": False, **read_json(folder / "sentence_bert_config.json")}
        write_json(folder / "sentence_bert_config.json", {**base, "max_seq_length": length})
    return length


def describe_outputs(model_path: Path, known: list[dict] | None = None) -> list[dict]:
    """Every output of the ONNX graph at `model_path`: name, dtype, shape (symbolic dims by name) and, from `known`
    (entries with the same name), its meaning."""
    import onnx

    meanings = {o.get("name"): o.get("meaning") for o in known or [] if isinstance(o, dict)}
    graph = onnx.load(str(model_path), load_external_data=False).graph
    out = []
    for output in graph.output:
        tensor = output.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else None
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
        entry = {"name": output.name, "dtype": dtype, "shape": shape}
        if meanings.get(output.name):
            entry["meaning"] = meanings[output.name]
        out.append(entry)
    return out


def finish_bundle(folder: Path) -> None:
    """Give the ONNX bundle in `folder` (any stage's) the layout clients load as is: the graph in onnx/model.onnx
    (artifacts.arrange_bundle); compress.json naming that file and every output the graph has (dtype, shape and
    meaning); config.json telling transformers.js which file is the model. A folder without a graph is left alone."""
    from compress.artifacts import arrange_bundle, model_file

    folder = Path(folder)
    arrange_bundle(folder)
    model = model_file(folder)
    if not model.is_file():
        return
    info = read_json(folder / "compress.json")
    if info:
        info["model"] = model.relative_to(folder).as_posix()
        info["outputs"] = describe_outputs(model, info.get("outputs"))
        write_json(folder / "compress.json", info)
    genai = read_json(folder / "genai_config.json")
    if genai.get("model", {}).get("decoder"):  # onnxruntime-genai opens the decoder by this path
        genai["model"]["decoder"]["filename"] = model.relative_to(folder).as_posix()
        write_json(folder / "genai_config.json", genai)
    config = read_json(folder / "config.json")
    if config:
        # transformers.js picks the file by dtype (fp32: onnx/model.onnx, q8: onnx/model_quantized.onnx, ...), and in
        # a browser defaults to q8: "fp32" names our one file whatever its precision (compress.json says that).
        # The other names would hide the file from sentence-transformers and Optimum, which look for model.onnx.
        js = {k: v for k, v in (config.get("transformers.js_config") or {}).items()
              if k not in ("dtype", "device_config")}
        js["dtype"] = "fp32"
        if (model.parent / f"{model.name}_data").is_file():  # the external data name transformers.js knows
            js["use_external_data_format"] = True
        write_json(folder / "config.json", {**config, "transformers.js_config": js})


def fixed_axes(model_dir: Path) -> dict:
    """{"batch": n, "sequence": n, ...}: the fixed axes an ONNX input declared (compress.json), else {}."""
    return read_json(Path(model_dir) / "compress.json").get("fixed_axes") or {}


def fixed_batches(hook, examples, max_length, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Eval batches of exactly `batch_size` examples (a fixed batch axis: the last batch is filled up with the
    first example and cut back by "_index"), each through `hook.encode` (which pads to a fixed length)."""
    out = []
    for start in range(0, len(examples), batch_size):
        part = list(examples[start:start + batch_size])
        real = len(part)
        part += [examples[0]] * (batch_size - real)
        batch = hook.encode(part, max_length)
        batch = {k: v[:real] if real < batch_size and "batch" not in hook.fixed else v for k, v in batch.items()}
        batch["_index"] = np.arange(start, start + real, dtype=np.int64)
        out.append(batch)
    return out


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ---------------------------------------------------------------- the input hook of the text tasks
# Every task module has INPUT_NAMES, load_data(data_cfg) -> Dataset, examples(split) -> the split's raw examples
# (texts, images) and inputs(model_dir) -> an object that turns examples into the named input arrays of the
# model at model_dir: encode, batches (eval, with "_index"), sample (to trace the export), training (lengths and
# collate for the training loop), axes (dynamic ONNX axes). The stages feed models only through it.


def load_data(cfg):
    """The recipe's data (DataConfig) as texts: compress/data.py."""
    from compress.data import load_dataset

    return load_dataset(cfg)


def for_model(task, data, model_dir: Path | None, source: str):
    """`data` with its labels as the class ids of the model at `model_dir`, for a task that maps them (a task's
    class_ids: text-classification reads the model's id2label); unchanged otherwise."""
    align = getattr(task, "class_ids", None)
    if align is None or model_dir is None:
        return data
    return align(data, Path(model_dir), where=f"data source {source!r}")


def examples(split) -> list[str]:
    return split.texts


class TextInputs:
    """Texts -> int64 token arrays with the tokenizer of the model at `model_dir` (loaded when first needed)."""

    names = INPUT_NAMES
    axes = {0: "batch", 1: "sequence"}

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self._tokenizer = None
        # An ONNX input with fixed axes (compress.json of its bundle): that sequence length, that batch size.
        self.fixed = fixed_axes(self.model_dir)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    def encode(self, texts, max_length: int, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        if "sequence" in self.fixed:
            max_length, pad_to_max = self.fixed["sequence"], True
        return tokenize(self.tokenizer, list(texts), max_length, pad_to_max)

    def batches(self, texts, max_length: int, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
        if self.fixed:
            return fixed_batches(self, list(texts), max_length, self.fixed.get("batch", batch_size))
        return batches(self.tokenizer, list(texts), max_length, batch_size)

    def sample(self, texts=None) -> dict[str, np.ndarray]:
        """Fixed texts of two lengths (so the trace sees padding) to trace the export with."""
        return tokenize(self.tokenizer, ["a short example", "and a somewhat longer example sentence here"], 16)

    def training(self, texts, max_length: int):
        """(token counts, collate): collate(index) pads those texts into input_ids and attention_mask tensors."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        return [len(x) for x in ids], lambda index: pad(ids, index, self.tokenizer.pad_token_id)
