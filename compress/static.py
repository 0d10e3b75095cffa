"""Static-embedding students (the model2vec approach): one vector per token of the teacher's vocabulary, averaged
over a text's tokens and L2-normalised; no transformer at run time.

model2vec (PyPI, MIT) makes the table: every vocabulary token through the teacher, PCA, SIF weighting by token
rank. Its own tokenizer drops the [unusedN] tokens and renumbers the rest, so the rows are moved back to the
teacher's token ids: the student then tokenizes exactly as the teacher does, and the special tokens ([CLS], [SEP],
[PAD], [UNK], ...) get zero rows, which reproduces model2vec's "no special tokens, no unknown token" at run time
whatever adds them (after the normalisation the number of zero rows averaged in does not matter). An optional
regression (table + a linear head, cosine loss onto the teacher's sentence embeddings of the recipe's texts, head
folded into the table) moves it into the teacher's space (measured in shared/clients.md: +0.04 cosine).

Saved in model2vec's format (`StaticModel.from_pretrained(folder)` loads it; numpy + tokenizers + safetensors at
run time), with the teacher's tokenizer files in teacher-tokenizer/ for the ONNX bundle: Gather + masked sum + L2
normalisation, inputs input_ids and attention_mask, outputs `embedding` and `last_hidden_state` (the token rows).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np

TOKENIZER_DIR = "teacher-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "merges.txt")


def is_static(folder: Path) -> bool:
    """A static student's folder (model2vec format, config.json model_type model2vec)."""
    config = Path(folder) / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "model2vec"
    except (OSError, ValueError):
        return False


def distill_table(teacher_net, teacher_dir: Path, pca_dims: int | None, sif_coefficient: float | None,
                  device: str = "cpu", keep: list[int] | None = None) -> np.ndarray:
    """model2vec's table, its rows at the teacher's token ids ([vocab, dims] float32; special and unmapped tokens
    zero). `keep`: teacher token ids; only those go through the teacher (model2vec's pass, PCA and rank weights on
    them), every other row stays zero."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir), use_fast=True)
    if keep is not None:
        return _subset_table(teacher_net, tokenizer, pca_dims, sif_coefficient, device, keep)
    from model2vec.distill import distill_from_model

    model = distill_from_model(teacher_net, tokenizer, pca_dims=pca_dims, sif_coefficient=sif_coefficient,
                               device=device, quantize_to="float32")
    vectors = np.asarray(model.embedding, dtype=np.float32)
    if model.token_mapping is not None or model.weights is not None:  # vocabulary quantization: not asked for
        ids = np.arange(len(model.tokens))
        rows = model.token_mapping[ids] if model.token_mapping is not None else ids
        vectors = vectors[rows] * (model.weights[:, None] if model.weights is not None else 1.0)
    theirs = model.tokenizer.get_vocab()
    table = np.zeros((len(tokenizer), vectors.shape[1]), dtype=np.float32)
    for token, teacher_id in tokenizer.get_vocab().items():
        if token in theirs and teacher_id < len(table):
            table[teacher_id] = vectors[theirs[token]]
    table[special_ids(tokenizer, len(table))] = 0.0
    return table


UNUSED = re.compile(r"\[unused\d+\]")  # model2vec's default token_remove_pattern


def _subset_table(net, tokenizer, pca_dims, sif_coefficient, device: str, keep: list[int]) -> np.ndarray:
    """model2vec's steps (its own functions) on the `keep` ids only: each as [CLS] token [SEP] through the teacher,
    mean-pooled; PCA fitted on them; the SIF weight of each token's rank in model2vec's whole vocabulary (the
    teacher's ids in order, [unusedN] and special tokens but [PAD] and [UNK] left out), as its full distill weights
    it: with every id kept, the table is model2vec's."""
    from model2vec.distill.inference import apply_pca, compute_weights, create_embeddings

    size, special = len(tokenizer), set(special_ids(tokenizer, len(tokenizer)))
    names = tokenizer.convert_ids_to_tokens(list(range(size)))
    kept_special = {tokenizer.pad_token_id, tokenizer.unk_token_id} - {None}  # model2vec keeps these two (zeroed after)
    ranked = [i for i in range(size) if (i not in special or i in kept_special) and not UNUSED.fullmatch(names[i])]
    rank = {token_id: r for r, token_id in enumerate(ranked)}
    ids = sorted({i for i in keep if i in rank and i not in special} | kept_special)
    if len(ids) == len(kept_special):
        raise ValueError("no token of the vocabulary asked for is in the teacher's (special tokens excluded)")
    prefix, suffix = [tokenizer.cls_token_id], [tokenizer.sep_token_id]
    if None in prefix + suffix:
        prefix, suffix = [], []
    vectors = create_embeddings(net, [prefix + [i] + suffix for i in ids], device,
                                pad_token_id=tokenizer.pad_token_id or 0)
    weights = compute_weights(len(ranked), sif_coefficient)[[rank[i] for i in ids]]
    vectors = apply_pca(vectors, pca_dims) * weights[:, None]
    table = np.zeros((size, vectors.shape[1]), dtype=np.float32)
    table[ids] = vectors
    table[list(special)] = 0.0
    return table


def frequent_ids(token_ids, count: int) -> list[int]:
    """The `count` token ids most frequent in these tokenized texts (ties: the lower id first)."""
    from collections import Counter

    counts = Counter(i for ids in token_ids for i in ids)
    return [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:count]]


def special_ids(tokenizer, size: int) -> list[int]:
    return [i for i in tokenizer.all_special_ids if 0 <= i < size]


def content_mask(table: np.ndarray) -> np.ndarray:
    """1.0 for tokens with a row (model2vec's tokens), 0.0 for the zero rows (special tokens)."""
    return (np.abs(table).sum(1) > 0).astype(np.float32)


def encode(table: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """What the ONNX graph computes, in numpy: masked sum of the token rows, L2-normalised."""
    rows = table[input_ids] * attention_mask[..., None].astype(np.float32)
    summed = rows.sum(1)
    return summed / (np.linalg.norm(summed, axis=1, keepdims=True) + 1e-32)


def regress(table: np.ndarray, collate, count: int, targets: np.ndarray, epochs: float, lr: float,
            batch_size: int, budget_s: float | None, seed: int, log=None) -> tuple[np.ndarray, dict]:
    """Table + linear head trained onto the teacher's embeddings `targets` (cosine loss, Adam), the head started
    at the least-squares map and folded into the table; `collate(index)` pads those texts' teacher token ids.
    Returns the new table [vocab, teacher width] and what was done."""
    import torch

    torch.manual_seed(seed)
    keep = torch.from_numpy(content_mask(table))
    # Only the rows with content are trained (Adam's update of the whole table was most of a step's time with a
    # `vocab` subset); every other token id points at one extra zero row, which the mask keeps out.
    rows = np.flatnonzero(content_mask(table))
    slot = torch.full((len(table),), len(rows), dtype=torch.long)
    slot[torch.from_numpy(rows)] = torch.arange(len(rows))
    weight = torch.nn.Parameter(torch.from_numpy(np.concatenate([table[rows], np.zeros_like(table[:1])])))
    goal = torch.from_numpy(np.asarray(targets, dtype=np.float32))

    def pooled(index):
        batch = collate(index)
        ids, mask = batch["input_ids"], batch["attention_mask"].float() * keep[batch["input_ids"]]
        return (weight[slot[ids]] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-9)

    started, order = time.monotonic(), list(range(count))
    with torch.no_grad():  # least squares from the mean rows to the targets: where the head starts
        x = torch.cat([pooled(order[i:i + 512]) for i in range(0, count, 512)])
        x1 = torch.cat([x, torch.ones(len(x), 1)], 1)
        solution = torch.linalg.lstsq(x1, goal).solution
    head = torch.nn.Linear(table.shape[1], goal.shape[1])
    with torch.no_grad():
        head.weight.copy_(solution[:-1].T)
        head.bias.copy_(solution[-1])
    optimizer = torch.optim.Adam([weight, *head.parameters()], lr=lr)
    steps_per_epoch = max(1, -(-count // batch_size))
    total, step, stopped = int(round(epochs * steps_per_epoch)), 0, "epochs"
    generator = torch.Generator().manual_seed(seed)
    while step < total:
        perm = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count, batch_size):
            if step >= total:
                break
            if budget_s is not None and time.monotonic() - started > budget_s:
                stopped, total = "max_minutes", step
                break
            index = perm[start:start + batch_size]
            loss = 1 - torch.nn.functional.cosine_similarity(head(pooled(index)), goal[index], dim=-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if log and step % 50 == 0:
                log(step, total, float(loss))
    with torch.no_grad():  # mean(rows) @ W.T + b == mean(rows @ W.T + b): the head goes into every row
        folded = np.zeros((len(table), goal.shape[1]), dtype=np.float32)
        folded[rows] = head(weight[:-1]).numpy()
    return folded, {"steps": step, "stopped_by": stopped, "seconds": round(time.monotonic() - started, 2)}


def save(folder: Path, table: np.ndarray, teacher_dir: Path, config: dict) -> None:
    """The student in model2vec's format at `folder` (the teacher's tokenizer without special tokens, padding or
    truncation, as model2vec tokenizes) and the teacher's own tokenizer files in TOKENIZER_DIR."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    spec = json.loads((Path(teacher_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    spec.update(post_processor=None, padding=None, truncation=None)
    model = StaticModel(vectors=table.astype(np.float32), tokenizer=Tokenizer.from_str(json.dumps(spec)),
                        config={"model_type": "model2vec", "architectures": ["StaticModel"],
                                "hidden_dim": int(table.shape[1]), "normalize": True, **config},
                        normalize=True, base_model_name=config.get("teacher"))
    model.save_pretrained(str(folder))
    (Path(folder) / TOKENIZER_DIR).mkdir()
    for name in TOKENIZER_FILES:
        if (Path(teacher_dir) / name).is_file():
            shutil.copy2(Path(teacher_dir) / name, Path(folder) / TOKENIZER_DIR / name)


def load_table(folder: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(Path(folder) / "model.safetensors"))["embeddings"].astype(np.float32)


def write_graph(table: np.ndarray, path: Path, opset: int) -> None:
    """Gather + masked sum + L2 normalisation (the mean's direction: zero rows and the count do not change it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    axis = numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")
    last = numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last")
    tiny = numpy_helper.from_array(np.array(1e-32, dtype=np.float32), "tiny")
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["rows"], name="static/gather"),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT, name="static/cast"),
        helper.make_node("Unsqueeze", ["mask", "axis_last"], ["mask3"], name="static/unsqueeze"),
        helper.make_node("Mul", ["rows", "mask3"], ["last_hidden_state"], name="static/mask"),
        helper.make_node("ReduceSum", ["last_hidden_state", "axis1"], ["summed"], keepdims=0, name="static/sum"),
    ]
    if opset >= 18:
        nodes.append(helper.make_node("ReduceL2", ["summed", "axis_last"], ["norm"], keepdims=1, name="static/l2"))
    else:
        nodes.append(helper.make_node("ReduceL2", ["summed"], ["norm"], axes=[-1], keepdims=1, name="static/l2"))
    nodes += [helper.make_node("Add", ["norm", "tiny"], ["safe_norm"], name="static/eps"),
              helper.make_node("Div", ["summed", "safe_norm"], ["embedding"], name="static/normalize")]
    dims = table.shape[1]
    graph = helper.make_graph(
        nodes, "static-student",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dims]),
         helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", dims])],
        [numpy_helper.from_array(table.astype(np.float32), "embeddings"), axis, last, tiny])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="compress")
    model.ir_version = min(model.ir_version, 9)  # what the onnxruntime builds we support read
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


BUNDLE_OUTPUTS = [
    {"name": "embedding", "meaning": "the sentence embedding: the mean of the token rows (special tokens have "
                                     "zero rows) with L2 normalisation already applied inside the graph: use it as "
                                     "is, do not pool or normalise again"},
    {"name": "last_hidden_state", "meaning": "the token rows of the static table (zero for special and padding "
                                             "tokens), for clients that mean-pool and normalise themselves"},
]


def write_bundle(student: Path, dest: Path, opset: int) -> dict:
    """The ONNX bundle of the static student at `student` into the new folder `dest` (graph at model.onnx; the
    caller's finish_bundle moves it to onnx/). Returns compress.json's content."""
    dest.mkdir()
    table = load_table(student)
    write_graph(table, dest / "model.onnx", opset)
    for name in TOKENIZER_FILES:
        if (student / TOKENIZER_DIR / name).is_file():
            shutil.copy2(student / TOKENIZER_DIR / name, dest / name)
    config = json.loads((student / "config.json").read_text(encoding="utf-8"))
    return {"task": "sentence-embedding", "output": "embedding", "pooling": "mean", "normalize": True,
            "normalized": True, "outputs": BUNDLE_OUTPUTS, "inputs": ["input_ids", "attention_mask"],
            "static": {"dims": int(table.shape[1]), "vocab": int(table.shape[0]),
                       **{k: config[k] for k in ("pca_dims", "regression") if k in config},
                       "model2vec": "the student artifact is a model2vec folder (StaticModel.from_pretrained)"}}


def parity(student: Path, bundle: Path, texts: list[str], max_length: int) -> dict:
    """The bundle (onnxruntime, the teacher's tokenizer with special tokens, truncated at max_length) against
    model2vec's own StaticModel.encode of the same texts (no special tokens: max_length - 2 tokens)."""
    import onnxruntime as ort
    from model2vec import StaticModel

    from compress.artifacts import model_file
    from compress.tasks.common import TextInputs

    inputs = TextInputs(bundle).encode(texts, max_length)
    session = ort.InferenceSession(str(model_file(bundle)), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], inputs)[0]
    expected = StaticModel.from_pretrained(str(student)).encode(list(texts), max_length=max_length - 2)
    cos = np.sum(got * expected, 1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1), 1e-12)
    return {"parity_max_abs": float(np.max(np.abs(got - expected))), "parity_cosine": float(np.min(cos)),
            "parity_texts": len(texts), "parity_reference": "model2vec StaticModel.encode"}
