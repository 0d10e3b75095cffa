"""sentence-transformers models with more than pooling (Dense, Normalize; issue 17): compress computes, exports and
scores them as the library does. sentence-transformers is a test dependency only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_bert

TEXTS = ["the movie was good", "a much longer sentence about a brilliant film and its cast", "dull", "fine"]


def _st_model(dest: Path, pooling: str, dense: bool, normalize: bool) -> Path:
    pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 5.x; `sentence_transformers.models` before (deprecated since)
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    base = make_tiny_bert(dest.parent / f"{dest.name}-base")
    shutil.rmtree(base / "1_Pooling")
    (base / "modules.json").unlink()
    modules = [models.Transformer(str(base), max_seq_length=32), models.Pooling(32, pooling)]
    torch.manual_seed(1)
    if dense:
        modules.append(models.Dense(32, 16, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SentenceTransformer(modules=modules, device="cpu").save(str(dest))
    return dest


def _library(folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)


@pytest.mark.parametrize("pooling, dense, normalize", [
    ("mean", True, True),
    ("cls", True, False),
    ("max", False, True),
])
def test_sentence_embedding_matches_the_library(tmp_path, pooling, dense, normalize):
    import torch

    from compress.tasks import sentence_embedding
    from compress.tasks.common import TextInputs

    folder = _st_model(tmp_path / "st", pooling, dense, normalize)
    config = sentence_embedding.pooling_config(folder)
    assert config["pooling"] == pooling and config["normalize"] == normalize and bool(config.get("dense")) == dense
    feeds = TextInputs(folder).encode(TEXTS, 32)
    with torch.no_grad():
        ours = sentence_embedding.load_model(folder)(*(torch.from_numpy(feeds[n]) for n in feeds)).numpy()
    assert np.abs(ours - _library(folder)).max() <= 1e-4


def test_dense_model_exports_with_parity_to_the_library(tmp_path, tiny_texts):
    """The exported bundle's embedding (Dense and Normalize inside the graph) equals sentence-transformers'."""
    import onnxruntime as ort

    from compress.tasks.common import TextInputs

    folder = _st_model(tmp_path / "st", "mean", True, True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: st-dense
task: sentence-embedding
teacher: {{source: {folder}, license: apache-2.0}}
data: {{source: {tiny_texts}, eval_size: 20, max_length: 32}}
stages: [{{kind: export, parity_max_abs: 0.0001}}]
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = tmp_path / "run" / "artifacts" / "teacher.onnx"
    assert json.loads((bundle / "compress.json").read_text())["dense"] == ["2_Dense"]
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(["embedding"], TextInputs(bundle).encode(TEXTS, 32))[0]
    assert ours.shape == (len(TEXTS), 16)
    assert np.abs(ours - _library(folder)).max() <= 1e-4
