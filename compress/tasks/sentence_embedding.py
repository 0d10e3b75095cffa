"""Task sentence-embedding: a transformer encoder + pooling (as in its sentence-transformers config).

The task interface, shared by every task module:
- NAME, HEADLINE (the quality metric key that gates and selection use, higher is better),
  DEFAULT_LOSS, OUTPUT_NAME;
- load_model(path, trust_remote_code) -> torch module mapping the INPUT_NAMES tensors, in order, to the output;
- load_backbone(path, trust_remote_code) -> the Hugging Face model that distillation trains;
- wrap(backbone, path) -> the module of load_model around a given backbone;
- quality(reference, outputs, labels) -> metrics dict (reference = the fp32 teacher's outputs);
- bundle_info(path) -> dict written to compress.json beside an exported model;
- the input hook, how the stages feed a model (tasks/common.py): INPUT_NAMES, load_data(data_cfg) -> Dataset,
  examples(split) -> its texts (or images), inputs(model_dir) -> encode / batches / sample / training.
Optional: build_student(spec, teacher, work_dir, trust) for distill's student when the models are not
transformers; STATIC_OP_TYPES, what int8-static quantizes by default (MatMul).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.tasks import common
from compress.tasks.common import read_json

NAME = "sentence-embedding"
HEADLINE = "cosine"
DEFAULT_LOSS = "cosine"
OUTPUT_NAME = "embedding"
INPUT_NAMES = common.INPUT_NAMES
# The input hook (tasks/common.py): texts, tokenized with the model's tokenizer.
load_data, examples, inputs = common.load_data, common.examples, common.TextInputs


def pooling_config(path: Path) -> dict:
    """Pooling mode and normalization from a sentence-transformers folder (mean + normalize otherwise)."""
    pooling = read_json(Path(path) / "1_Pooling" / "config.json")
    modules = read_json(Path(path) / "modules.json") if (Path(path) / "modules.json").is_file() else []
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules) if modules else True
    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    return {"pooling": mode, "normalize": normalize}


def load_backbone(path: Path, trust_remote_code: bool = False):
    from transformers import AutoModel

    from compress.tasks.common import model_load_errors

    with model_load_errors(path):
        return AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def wrap(backbone, path: Path, head=None):
    """Backbone + pooling (+ the Dense projection head of the folder at `path`, or `head`) + normalize."""
    import torch

    from compress.tasks.embedding_head import load_dense

    cfg = pooling_config(path)
    head = head if head is not None else load_dense(path)

    class SentenceEmbedder(torch.nn.Module):
        # Keyword arguments: positional export of BertModel trips over `use_cache` in recent transformers.
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.head = head  # a submodule: trained and saved with the student

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if cfg["pooling"] == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.head is not None:
                pooled = self.head(pooled)
            if cfg["normalize"]:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled

    return SentenceEmbedder(backbone).eval()


def load_model(path: Path, trust_remote_code: bool = False):
    return wrap(load_backbone(path, trust_remote_code), path)


def quality(reference: np.ndarray, outputs: np.ndarray, labels=None) -> dict[str, float]:
    """Mean cosine to the reference embeddings, and top-10 retrieval agreement with the reference. Embeddings
    of another width (another space: a PCA student, a student before its projection) are compared by rank
    alone: top-10 agreement, no cosine."""
    if len(reference) != len(outputs) or reference.ndim != 2 or outputs.ndim != 2:
        return {}
    if reference.shape != outputs.shape:
        return {"top10_agreement": _topk_agreement(_unit(reference), _unit(outputs), k=10)}
    ref, out = _unit(reference), _unit(outputs)
    cosine = float(np.mean(np.sum(ref * out, axis=1)))
    return {"cosine": cosine, "top10_agreement": _topk_agreement(ref, out, k=10)}


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _topk_agreement(ref: np.ndarray, out: np.ndarray, k: int) -> float:
    """Each text queries the others; the share of the reference's top-k neighbours found again."""
    k = min(k, len(ref) - 1)
    if k < 1:
        return 1.0

    def topk(x):
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]

    a, b = topk(ref), topk(out)
    return float(np.mean([len(set(r) & set(o)) / k for r, o in zip(a, b)]))


def bundle_info(path: Path) -> dict:
    from compress.tasks.embedding_head import head_info

    return {"task": NAME, "output": OUTPUT_NAME, **pooling_config(path), **head_info(path)}
