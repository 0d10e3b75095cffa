"""Which task a user's ONNX model fits, and the evidence for a person (issue 34): its inputs and outputs (dtype
and shape, as compress/tasks/onnx_input.py reads them), the config files beside it, a tokenizer, a
sentence-transformers config. `compress bench` prints both."""

from __future__ import annotations

from pathlib import Path

from compress.tasks import common
from compress.tasks.onnx_input import (
    CLASSIFIER_OUTPUTS,
    EMBEDDING_OUTPUTS,
    TOKEN_OUTPUTS,
    GraphInfo,
    tokenizer_dir,
)

SENTENCE_TRANSFORMERS_FILES = ("modules.json", "1_Pooling", "config_sentence_transformers.json")


def guess_task(info: GraphInfo) -> tuple[str, list[str]]:
    """The task `info`'s graph fits and the evidence, for a person: its inputs and outputs (dtype and shape), the
    config files beside it (architectures, id2label), a tokenizer, a sentence-transformers config. A [batch, n]
    float output beside a tokenizer is an embedding unless something says it holds classes (id2label with n
    labels, a classification architecture, an output named logits without token states beside it)."""
    if info.input("input_ids") is None:
        images = ", ".join(t.describe_typed() for t in info.inputs) or "none"
        return "image-classification", [f"inputs {images}: no input_ids, so not text"]
    outputs = list(info.outputs)
    evidence = [f"outputs {', '.join(t.describe_typed() for t in outputs)}"]
    folders = _folders(info.path)
    tokenizer = tokenizer_dir(info.path)
    config_dir = next((f for f in folders if (f / "config.json").is_file()), None)
    config = _read_config(config_dir / "config.json") if config_dir else {}
    labels = config.get("id2label") if isinstance(config.get("id2label"), dict) else {}
    architectures = [str(a) for a in config.get("architectures") or [] if isinstance(a, str)]
    st = sorted({name for f in folders for name in SENTENCE_TRANSFORMERS_FILES if (f / name).exists()})
    pooled = [t for t in outputs if t.role == "pooled"]
    states = [t for t in outputs if t.role == "token states"]
    named_embedding = [t for name in EMBEDDING_OUTPUTS + TOKEN_OUTPUTS for t in outputs if t.role and t.name == name]

    classifier = [a for a in architectures if a.endswith(("ForSequenceClassification", "ForTextClassification"))]
    if classifier:
        return "text-classification", evidence + [f"config.json: architecture {classifier[0]}"]
    counted = [t for t in pooled if labels and t.dims[-1] == len(labels) and t.name not in EMBEDDING_OUTPUTS]
    if counted:
        return "text-classification", evidence + [
            f"config.json id2label has {len(labels)} labels, the size of {counted[0].name}: class scores"]
    logits = [t for t in pooled if t.name in CLASSIFIER_OUTPUTS]
    if logits and not states and not named_embedding:
        return "text-classification", evidence + [f"{logits[0].name} is named as class scores, and no output is "
                                                  "token states or named as an embedding"]
    if named_embedding:
        what = "token states" if named_embedding[0].role == "token states" else "an embedding"
        evidence.append(f"{named_embedding[0].name} is named as {what}")
    elif states:
        evidence.append(f"{states[0].name} is token states [batch, sequence, hidden]")
    for t in pooled:
        if t.name in CLASSIFIER_OUTPUTS or t.name in EMBEDDING_OUTPUTS:
            continue
        size = t.dims[-1] if isinstance(t.dims[-1], int) else "n"
        beside = "beside a tokenizer, with" if tokenizer else "with"
        evidence.append(f"{t.name} float [batch, {size}] {beside} no id2label or labels config: an embedding, "
                        f"not {size} classes")
        break
    if st:
        evidence.append(f"sentence-transformers config beside it ({', '.join(st)})")
    if labels and not counted:
        evidence.append(f"config.json id2label has {len(labels)} labels, the size of no output")
    if not tokenizer:
        evidence.append("no tokenizer beside it (compress needs one for text)")
    return "sentence-embedding", evidence


def _folders(model: Path) -> list[Path]:
    """Where a model's config and tokenizer files are: beside it, and above it for hub repos' onnx/model.onnx."""
    return [model.parent] + ([model.parent.parent] if model.parent.name == "onnx" else [])


def _read_config(path: Path) -> dict:
    try:
        config = common.read_json(path)
    except (ValueError, OSError):  # a broken config.json is no evidence either way
        return {}
    return config if isinstance(config, dict) else {}
