"""Teacher and student of different shapes: what can be distilled into what, and how their outputs meet.

Each side reads the text with its own tokenizer (the teacher's outputs are computed once, with the teacher's
tokenizer, and cached); the losses compare what the task compares: sentence embeddings or logits. What does
not fit is refused with one sentence saying what to change:
- sentence embeddings of another width need a bridge: `projection: linear` (a learned head to the teacher's
  width, exported inside the ONNX graph: index-compatible) or `projection: pca` (the teacher's targets reduced
  to the student's width: the index has to be rebuilt);
- a classifier student must predict the teacher's labels: a base model gets a new head for them, a model
  already trained on another label set cannot be compared logit by logit;
- feature losses (hidden-mse, attention) compare token positions: they need the same tokenizer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from compress.errors import StageError

PROJECTIONS = ("linear", "pca", "none")
FEATURE_LOSSES = ("hidden-mse", "attention")


def tokenizer_key(folder: Path) -> str:
    """Identifies a tokenizer by its files (two models with equal files split text the same way)."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model"):
        if (Path(folder) / name).is_file():
            digest.update(name.encode() + (Path(folder) / name).read_bytes())
    return digest.hexdigest()


def check_labels(teacher_config, student_dir: Path) -> None:
    """A student that already classifies into another label set cannot learn the teacher's logits."""
    import json

    config_file = Path(student_dir) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    trained_head = any(a.endswith(("ForSequenceClassification", "ForImageClassification"))
                       for a in config.get("architectures") or [])
    theirs = sorted(str(v) for v in (config.get("id2label") or {}).values())
    ours = sorted(str(v) for v in (teacher_config.id2label or {}).values())
    if trained_head and theirs and theirs != ours:
        raise StageError(f"the student classifies into {theirs} but the teacher into {ours}: their logits cannot "
                         "be compared; pick a student trained on the teacher's labels, or a base model (it gets a "
                         "new head for the teacher's labels)")


def resolve_projection(asked: str | None, task, student_width: int, teacher_width: int, losses) -> str:
    """linear | pca | none for this pairing, or a one-sentence StageError."""
    embeds = task.OUTPUT_NAME == "embedding"
    if not embeds:
        if asked not in (None, "none"):
            raise StageError(f"student.projection: {asked} applies to sentence embeddings; task {task.NAME} "
                             f"compares {task.OUTPUT_NAME}")
        return "none"
    projection = asked or ("linear" if student_width != teacher_width else "none")
    output_losses = [name for name in losses if name not in FEATURE_LOSSES]
    if projection == "none" and student_width != teacher_width and output_losses:
        raise StageError(f"the student's width {student_width} differs from the teacher's {teacher_width}: set "
                         "student.projection: linear (a learned head to the teacher's width, searchable in the "
                         "teacher's index) or pca (the teacher's targets reduced to the student's width)")
    if projection == "pca" and student_width > teacher_width:
        raise StageError(f"student.projection: pca reduces the teacher's {teacher_width} dimensions; the "
                         f"student's {student_width} are more: use projection: linear")
    return projection


def check_tokenizers(losses, teacher_dir: Path, student_dir: Path) -> None:
    feature = [name for name in losses if name in FEATURE_LOSSES]
    if feature and tokenizer_key(teacher_dir) != tokenizer_key(student_dir):
        raise StageError(f"loss {feature[0]} compares token positions, but the student's tokenizer differs from "
                         "the teacher's: use output losses (cosine, mse, logit-kd) for this student")


def index_note(projection: str, student_width: int, teacher_width: int) -> dict:
    """What the report and the model card say about searching the teacher's index with the student."""
    if projection == "linear":
        return {"projection": "linear", "index_compatible": True,
                "index_note": f"learned projection {student_width}->{teacher_width} inside the model: searchable "
                              "in an index built with the teacher"}
    if projection == "pca":
        return {"projection": "pca", "index_compatible": False,
                "index_note": f"PCA space ({teacher_width}->{student_width}) of the teacher's embeddings: the "
                              "index has to be rebuilt"}
    return {"projection": "none", "index_compatible": student_width == teacher_width}
