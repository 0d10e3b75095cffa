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


def bundle_info(path: Path) -> dict:
    outputs = [{"name": OUTPUT_NAME, "meaning": "one score per class, in the order of labels (config.json id2label), "
                                                "before softmax"}]
    return {"task": NAME, "output": OUTPUT_NAME, "labels": label_names(path), "outputs": outputs}
