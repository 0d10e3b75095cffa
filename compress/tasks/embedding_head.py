"""The projection head of a sentence-embedding student whose width differs from its teacher's.

`linear`: a learned Linear(student width -> teacher width) after pooling, trained with the student and stored
the sentence-transformers way (a `Dense` module: `<n>_Dense/config.json` + `model.safetensors`, listed in
modules.json before Normalize), so the folder still loads in sentence-transformers and the export puts the
projection inside the ONNX graph. Its vectors live in the teacher's space: an index built with the teacher
keeps working (index-compatible).
`pca`: the teacher's targets reduced by PCA to the student's width; the student has no head. Its vectors live
in the PCA space: the index has to be rebuilt (re-encode with the student, or map the teacher's stored vectors
with the saved `pca.npz`: (v - mean) @ components.T).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DENSE_TYPE = "sentence_transformers.models.Dense"
PCA_FILE = "pca.npz"
IDENTITY = "torch.nn.modules.linear.Identity"


def modules(path: Path) -> list[dict]:
    file = Path(path) / "modules.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else []


def dense_dir(path: Path) -> Path | None:
    """The folder of the model's Dense module, if modules.json lists one."""
    found = [m for m in modules(path) if m.get("type", "").endswith(".Dense")]
    return Path(path) / found[0]["path"] if found else None


def new_linear(student_width: int, teacher_width: int, seed: int = 0):
    """An untrained projection (the student before distillation: its vectors are not yet in the teacher's space)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(student_width, teacher_width)
    with torch.no_grad():
        layer.weight.normal_(0, student_width ** -0.5, generator=generator)
        layer.bias.zero_()
    return layer


def fit_linear(layer, inputs: np.ndarray, targets: np.ndarray, ridge: float = 1e-3) -> float:
    """Set `layer` to the least-squares map from the student's unit embeddings to the teacher's (no bias: the
    direction of W x is that of W x/|x|, and cosine only sees directions). Returns the fit's mean cosine."""
    import torch

    x, t = inputs.astype(np.float64), targets.astype(np.float64)
    gram = x.T @ x
    weight = np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)), x.T @ t).T
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        layer.bias.zero_()
    fitted = x @ weight.T
    cos = np.sum(fitted * t, 1) / np.maximum(np.linalg.norm(fitted, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
    return float(cos.mean())


def write_dense(folder: Path, layer) -> None:
    """Store `layer` as a sentence-transformers Dense module of the model in `folder` (before Normalize)."""
    from safetensors.torch import save_file

    listed = [m for m in modules(folder) if not m.get("type", "").endswith(".Dense")] or [
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    at = next((i for i, m in enumerate(listed) if m.get("type", "").endswith(".Normalize")), len(listed))
    listed.insert(at, {"path": f"{at}_Dense", "type": DENSE_TYPE})
    for i, module in enumerate(listed):
        module.update(idx=i, name=str(i))
        if module["path"] and module["path"] != "1_Pooling":
            module["path"] = f"{i}_{module['path'].split('_', 1)[-1]}"
    dense = Path(folder) / listed[at]["path"]
    dense.mkdir(parents=True, exist_ok=True)
    config = {"in_features": layer.in_features, "out_features": layer.out_features, "bias": layer.bias is not None,
              "activation_function": IDENTITY}
    (dense / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({f"linear.{k}": v.detach().cpu().contiguous() for k, v in layer.state_dict().items()},
              str(dense / "model.safetensors"))
    (Path(folder) / "modules.json").write_text(json.dumps(listed, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- pca


def fit_pca(train: np.ndarray, width: int) -> dict:
    """Mean and the top `width` principal directions of the teacher's training targets."""
    if width > min(train.shape):
        raise ValueError(f"PCA to {width} dimensions needs at least {width} training texts (got {len(train)})")
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return {"mean": mean.astype(np.float32), "components": vt[:width].astype(np.float32)}


def apply_pca(pca: dict, vectors: np.ndarray) -> np.ndarray:
    return ((vectors - pca["mean"]) @ pca["components"].T).astype(np.float32)


def write_pca(folder: Path, pca: dict) -> None:
    with open(Path(folder) / PCA_FILE, "wb") as handle:
        np.savez(handle, **pca)


def head_info(path: Path, teacher_width: int | None = None) -> dict:
    """What compress.json, the report and the model card say about the student's space."""
    folder = Path(path)
    if (folder / PCA_FILE).is_file():
        return {"projection": "pca", "index_compatible": False,
                "index_note": "PCA space of the teacher's embeddings: the index has to be rebuilt (re-encode with the "
                              f"student, or map the teacher's stored vectors with {PCA_FILE})"}
    dense = dense_dir(folder)
    if dense is not None:
        width = json.loads((dense / "config.json").read_text(encoding="utf-8"))["out_features"]
        ok = teacher_width is None or width == teacher_width
        return {"projection": "linear", "index_compatible": ok,
                "index_note": "learned projection to the teacher's space: searchable in the teacher's index"
                if ok else f"projects to {width} dimensions, not the teacher's {teacher_width}"}
    return {}
