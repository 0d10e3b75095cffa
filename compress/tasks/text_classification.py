"""Task text-classification: a transformer encoder with a classification head; the output is the logits.

Same interface as tasks/sentence_embedding.py. The quality metric compares a model's predictions with the
gold labels (accuracy, macro-F1) and with the reference model's predictions (agreement), so a student or a
quantized variant is judged both on the task and on how faithfully it copies the teacher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.tasks import common
from compress.tasks.common import read_json

NAME = "text-classification"
HEADLINE = "accuracy"
DEFAULT_LOSS = "logit-kd"
OUTPUT_NAME = "logits"
INPUT_NAMES = common.INPUT_NAMES
# The input hook (tasks/common.py): texts, tokenized with the model's tokenizer.
load_data, examples, inputs = common.load_data, common.examples, common.TextInputs


def load_backbone(path: Path, trust_remote_code: bool = False, **config_overrides):
    """The Hugging Face sequence-classification model; `config_overrides` (e.g. num_labels) reshape the head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from compress.tasks.common import loaded, model_load_errors

    # A folder without classification-head weights (an encoder not yet fine-tuned) gets a random head: seeded, so
    # that every load (export's parity check runs in a fresh process) builds the same model; and the RNG state of
    # the caller is left as it was.
    with model_load_errors(path), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return loaded(path, AutoModelForSequenceClassification.from_pretrained(
            str(path), trust_remote_code=trust_remote_code, ignore_mismatched_sizes=bool(config_overrides),
            output_loading_info=True, **config_overrides,
        ))


def wrap(backbone, path: Path | None = None):
    import torch

    class Classifier(torch.nn.Module):
        # Keyword arguments: positional export of BertModel trips over `use_cache` in recent transformers.
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Classifier(backbone).eval()


def load_model(path: Path, trust_remote_code: bool = False):
    return wrap(load_backbone(path, trust_remote_code), path)


def quality(reference: np.ndarray | None, outputs: np.ndarray, labels=None) -> dict[str, float]:
    """Accuracy and macro-F1 against `labels` (against the reference's predictions when there are no labels),
    agreement: the share of texts where the model predicts what the reference predicts, and with labels
    chance_accuracy: the most frequent label's share, the floor that says whether the labels fit the model
    (compress/tasks/quality_basis.py: at chance, agreement becomes the headline)."""
    reference = outputs if reference is None else reference
    if reference.shape != outputs.shape or outputs.ndim != 2:
        return {}
    predicted = outputs.argmax(axis=1)
    expected = reference.argmax(axis=1)
    truth = np.asarray(labels) if labels is not None else expected
    scores = {
        "accuracy": float(np.mean(predicted == truth)),
        "macro_f1": macro_f1(truth, predicted, outputs.shape[1]),
        "agreement": float(np.mean(predicted == expected)),
    }
    if labels is not None:
        from compress.tasks.quality_basis import chance

        scores["chance_accuracy"] = chance(truth)
    return scores


def item_scores(reference: np.ndarray | None, outputs: np.ndarray, labels=None) -> dict[str, list[float]]:
    """Per held-out text, 1/0: accuracy (right against the labels, or the reference's predictions without them)
    and agreement (the reference's prediction): the items the report's bootstrap intervals resample. Macro-F1 is
    no mean over texts, so it has none."""
    reference = outputs if reference is None else reference
    if reference.shape != outputs.shape or outputs.ndim != 2:
        return {}
    predicted, expected = outputs.argmax(axis=1), reference.argmax(axis=1)
    truth = np.asarray(labels) if labels is not None else expected
    return {"accuracy": (predicted == truth).astype(np.float64).tolist(),
            "agreement": (predicted == expected).astype(np.float64).tolist()}


def macro_f1(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1; a class absent from both truth and predictions is skipped."""
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((predicted == c) & (truth == c)))
        fp = int(np.sum((predicted == c) & (truth != c)))
        fn = int(np.sum((predicted != c) & (truth == c)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def label_names(path: Path) -> list[str]:
    """Class names in id order, from the model's config (id2label)."""
    id2label = read_json(Path(path) / "config.json").get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def class_ids(data, model_dir: Path, where: str = "the data"):
    """`data` (compress/data.py Dataset) with its labels as the class ids of the model at `model_dir`, matched
    through the model's id2label: by name when every data label is one of the model's class names (without case:
    "positive" is "POSITIVE"), else numbers as numbers (label "2" is class 2). Labels the model cannot have (a
    number beyond its classes, more classes than it has) are refused in one sentence; names of a named model that
    are not its classes are left to the report (compress/tasks/quality_basis.py: quality becomes agreement with
    the teacher)."""
    from dataclasses import replace

    from compress.errors import SourceError
    from compress.tasks.quality_basis import generic

    names = list(getattr(data, "label_names", None) or [])
    if not names or data.train.labels is None and data.eval.labels is None:
        return data
    model = label_names(model_dir)
    # No id2label in config.json (an encoder saved without a head): transformers gives the new head 2 classes.
    count = len(model) or int(read_json(Path(model_dir) / "config.json").get("num_labels") or 2)
    shown = ", ".join(repr(n) for n in model[:6]) + (" ..." if len(model) > 6 else "")
    folded = [str(m).casefold() for m in model]
    if set(names) <= set(model):
        target = {n: model.index(n) for n in names}
    elif len(set(folded)) == len(folded) and {str(n).casefold() for n in names} <= set(folded):
        target = {n: folded.index(str(n).casefold()) for n in names}  # "positive" is the model's "POSITIVE"
    elif all(_class_number(n) is not None for n in names):
        outside = [n for n in names if _class_number(n) >= count]
        if outside:
            raise SourceError(f"{where}: label {outside[0]!r} is not a class of the model, which has {count} "
                              f"classes (ids 0 to {count - 1}{': ' + shown if shown else ''}); check label_field, or list the classes "
                              "in data.labels")
        target = {n: _class_number(n) for n in names}
    elif generic(model) and len(names) > count:
        raise SourceError(f"{where}: {len(names)} classes in the labels ({', '.join(map(repr, names[:6]))}"
                          f"{' ...' if len(names) > 6 else ''}) but the model has {count}; fine-tune it on them "
                          "(a finetune stage) or list the classes it was trained on in data.labels")
    else:  # a model with unnamed classes keeps the data's order; names it does not have: the report says so
        return data
    ids = [target[n] for n in names]

    def split(part):
        return part if part.labels is None else replace(part, labels=[ids[i] for i in part.labels])

    return replace(data, train=split(data.train), eval=split(data.eval))


def _class_number(name: str) -> int | None:
    text = str(name).strip()
    return int(text) if text.isdigit() else None


def bundle_info(path: Path) -> dict:
    outputs = [{"name": OUTPUT_NAME, "meaning": "one score per class, in the order of labels (config.json id2label), "
                                                "before softmax"}]
    return {"task": NAME, "output": OUTPUT_NAME, "labels": label_names(path), "outputs": outputs}
