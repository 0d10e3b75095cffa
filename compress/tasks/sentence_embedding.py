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
# Exported beside the embedding (after it: readers of the first output get the embedding): the token states the
# in-graph pooling reads, which sentence-transformers, Optimum and transformers.js pool themselves.
EXTRA_OUTPUTS = {"last_hidden_state": {0: "batch", 1: "sequence"}}
INPUT_NAMES = common.INPUT_NAMES
# The input hook (tasks/common.py): texts, tokenized with the model's tokenizer.
load_data, examples, inputs = common.load_data, common.examples, common.TextInputs


POOLING_MODES = ("mean", "cls", "max")
ACTIVATIONS = {"Tanh": "tanh", "Identity": None, "ReLU": "relu", "GELU": "gelu", "Sigmoid": "sigmoid"}


def pooling_config(path: Path) -> dict:
    """How a sentence-transformers folder turns token states into the embedding: pooling (mean, cls, max), its
    Dense layers (in modules.json order) and normalisation; mean + normalize without a config."""
    from compress.errors import SourceError

    path = Path(path)
    pooling = read_json(path / "1_Pooling" / "config.json")
    modules = read_json(path / "modules.json") if (path / "modules.json").is_file() else []
    modules = modules if isinstance(modules, list) else []
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules) if modules else True
    mode = pooling.get("pooling_mode")  # sentence-transformers >= 5 writes the mode, older versions flags
    if isinstance(mode, list):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    if mode is None:
        flags = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True]
        names = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}
        mode = "+".join(names.get(k, k.removeprefix("pooling_mode_")) for k in flags) or "mean"
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(mode, mode)
    if mode not in POOLING_MODES:
        raise SourceError(f"{path}: sentence-transformers pooling {mode!r} is not supported (compress pools by "
                          f"{', '.join(POOLING_MODES)})")
    dense = []
    for module in modules:
        if module.get("type", "").endswith("Dense"):
            config = read_json(path / module.get("path", "") / "config.json")
            activation = str(config.get("activation_function") or "Tanh").rsplit(".", 1)[-1]
            if activation not in ACTIVATIONS:
                raise SourceError(f"{path}: Dense activation {activation!r} is not supported (supported: "
                                  f"{', '.join(ACTIVATIONS)})")
            dense.append({"path": module.get("path", ""), "activation": activation})
    return {"pooling": mode, "normalize": normalize, **({"dense": dense} if dense else {})}


def _dense_layers(path: Path, dense: list[dict]):
    """The Dense modules of a sentence-transformers folder as torch layers (Linear + activation)."""
    import torch
    from safetensors.torch import load_file

    layers = []
    for spec in dense:
        folder = Path(path) / spec["path"]
        weights = folder / "model.safetensors"
        if weights.is_file():
            state = load_file(str(weights))
        else:  # older sentence-transformers: a pickle, read without running code
            state = torch.load(folder / "pytorch_model.bin", weights_only=True, map_location="cpu")
        weight = state["linear.weight"]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="linear.bias" in state)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items() if k.startswith("linear.")})
        act = ACTIVATIONS[spec["activation"]]
        layers += [linear] + ([getattr(torch.nn, spec["activation"])()] if act else [])
    return torch.nn.Sequential(*layers)  # trainable: a student's projection head learns with it


def load_backbone(path: Path, trust_remote_code: bool = False):
    from transformers import AutoModel

    from compress.tasks.common import loaded, model_load_errors

    with model_load_errors(path):
        return loaded(path, AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                                      output_loading_info=True))


def wrap(backbone, path: Path, head=None, token_states: bool = False):
    """Backbone + pooling (+ the Dense projection head of the folder at `path`, or `head`) + normalize; with
    `token_states`, (embedding, last_hidden_state as float32)."""
    import torch

    cfg = pooling_config(path)
    head = head if head is not None else (_dense_layers(path, cfg["dense"]) if cfg.get("dense") else None)

    class SentenceEmbedder(torch.nn.Module):
        # Keyword arguments: positional export of BertModel trips over `use_cache` in recent transformers.
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.head = head  # sentence-transformers Dense layers (a projection head too): trained and saved

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if cfg["pooling"] == "cls":
                pooled = hidden[:, 0]
            elif cfg["pooling"] == "max":
                pooled = (hidden + (mask - 1) * 1e9).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.head is not None:
                pooled = self.head(pooled)
            if cfg["normalize"]:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return (pooled, hidden.float()) if token_states else pooled

    return SentenceEmbedder(backbone).eval()


def load_model(path: Path, trust_remote_code: bool = False):
    return wrap(load_backbone(path, trust_remote_code), path)


def export_model(path: Path, trust_remote_code: bool = False):
    """The module the export traces: its outputs are OUTPUT_NAME, then EXTRA_OUTPUTS."""
    return wrap(load_backbone(path, trust_remote_code), path, token_states=True)


def quality(reference: np.ndarray, outputs: np.ndarray, labels=None) -> dict[str, float]:
    """Mean cosine to the reference embeddings, and top-10 retrieval agreement with the reference. Embeddings
    of another width (another space: a PCA student, a student before its projection) are compared by rank
    alone: top-10 agreement, no cosine. With labels, task quality of the embeddings themselves: probe_accuracy
    (a logistic regression trained on a fixed half, scored on the other) and knn_accuracy (the majority label of
    each text's 10 nearest others)."""
    return {name: float(np.mean(values)) for name, values in item_scores(reference, outputs, labels).items()}


def item_scores(reference: np.ndarray, outputs: np.ndarray, labels=None) -> dict[str, list[float]]:
    """Per held-out text, the scores whose means `quality` reports (the report's bootstrap intervals resample
    them): cosine, top-10 overlap, and with labels whether the probe (texts of the test half only, in a fixed
    order) and the kNN vote are right."""
    if len(reference) != len(outputs) or reference.ndim != 2 or outputs.ndim != 2:
        return {}
    ref, out = _unit(reference), _unit(outputs)
    scores = {} if reference.shape != outputs.shape else {"cosine": np.sum(ref * out, axis=1).tolist()}
    scores["top10_agreement"] = _topk_overlap(ref, out, k=10).tolist()
    labels = np.asarray(labels) if labels is not None else None
    if labels is not None and len(labels) == len(out) and len(np.unique(labels)) > 1:
        probe = probe_correct(out, labels)
        if probe is not None:
            scores["probe_accuracy"] = probe.tolist()
        scores["knn_accuracy"] = knn_correct(out, labels).tolist()
    return scores


PROBE_SEED = 0
PROBE_MIN_TEXTS = 20  # fewer, and one half cannot hold every label
KNN_K = 10


def probe_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The probe's fixed split of n held-out texts: (train, test) indices, the same for every variant."""
    order = np.random.default_rng(PROBE_SEED).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def probe_correct(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """1/0 per test text: whether a logistic regression fitted on the train half's embeddings gets its label
    (None when the train half holds a single label or too few texts)."""
    if len(labels) < PROBE_MIN_TEXTS:
        return None
    train, test = probe_split(len(labels))
    if len(np.unique(labels[train])) < 2:
        return None
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=1000, random_state=PROBE_SEED)
    probe.fit(embeddings[train], labels[train])
    return (probe.predict(embeddings[test]) == labels[test]).astype(np.float64)


def knn_correct(embeddings: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """1/0 per text: whether the most common label of its k nearest other texts (cosine; ties to the nearer
    neighbours' label) is its own."""
    k = min(k, len(labels) - 1)
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = labels[nearest]
    correct = np.empty(len(labels))
    for i, row in enumerate(votes):
        values, counts = np.unique(row, return_counts=True)
        tied = set(values[counts == counts.max()].tolist())
        correct[i] = next(v for v in row.tolist() if v in tied) == labels[i]
    return correct


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _topk_overlap(ref: np.ndarray, out: np.ndarray, k: int) -> np.ndarray:
    """Per text: the share of the reference's top-k neighbours that its top-k under `out` finds again."""
    k = min(k, len(ref) - 1)
    if k < 1:
        return np.ones(len(ref))

    def topk(x):
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]

    a, b = topk(ref), topk(out)
    return np.array([len(set(r) & set(o)) / k for r, o in zip(a, b)])


def bundle_info(path: Path) -> dict:
    from compress.tasks.embedding_head import head_info

    info = pooling_config(path)
    if info.get("dense"):  # inside the exported graph: the bundle's output is the final embedding
        info["dense"] = [d["path"] for d in info["dense"]]
    steps = [f"{info['pooling']} pooling"] + (["the Dense projection"] if info.get("dense") else []) + (
        ["L2 normalisation"] if info["normalize"] else [])
    outputs = [
        {"name": OUTPUT_NAME, "meaning": f"the sentence embedding, {' + '.join(steps)} already applied inside the "
                                         "graph: use it as is, do not pool or normalise again"},
        {"name": "last_hidden_state", "meaning": "token states of the last encoder layer (float32), what the "
                                                 "in-graph pooling reads: for clients that pool themselves "
                                                 "(sentence-transformers, Optimum, transformers.js)"},
    ]
    # "pooling" and "normalized": what the graph already did to OUTPUT_NAME (normalize: the older key, kept).
    return {"task": NAME, "output": OUTPUT_NAME, **info, "normalized": info["normalize"], "outputs": outputs,
            **head_info(path)}
