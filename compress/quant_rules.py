"""Nodes that dynamic int8 keeps in fp32 by default, per architecture: measured outliers, not guesses.

Dynamic int8 quantizes each MatMul's input per tensor at run time (one scale for the whole activation).
all-mpnet-base-v2's feed-forward activations carry outliers that one scale cannot hold: its int8 kept only
cosine 0.866 to fp32 (measured on 100 held-out reviews, fused graph, per-channel weights; per-tensor
weights 0.70, reduce_range no help, the unfused graph the same 0.865; the embeddings' Gather costs nothing:
0.999). Quantizing one kind of MatMul at a time across the 12 layers: FFN output 0.875, FFN input 0.991,
attention v 0.998, q/k/o 0.9998; by layer, 7 and 8 worst (0.977, 0.965). Keeping every FFN output in fp32
gives 0.989, plus the FFN inputs 0.998. BERT-style MiniLM needs none of this (0.992 with everything int8).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# model_type (config.json) -> name patterns of MatMuls kept in fp32 by int8-dynamic unless the recipe says.
KEEP_FLOAT = {
    "mpnet": (r"/intermediate/dense/MatMul$", r"/output/dense/MatMul$"),
}


def model_type(folder: Path) -> str | None:
    config = Path(folder) / "config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None


def kept_float(model_path: Path, folder: Path, patterns: list[str] | None) -> list[str]:
    """Names of the weight MatMuls of `model_path` matching `patterns` (None: the architecture's defaults)."""
    import onnx

    if patterns is None:
        patterns = list(KEEP_FLOAT.get(model_type(folder) or "", ()))
    if not patterns:
        return []
    compiled = [re.compile(p) for p in patterns]
    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and any(c.search(n.name) for c in compiled)]
