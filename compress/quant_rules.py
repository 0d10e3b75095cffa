"""Nodes that dynamic int8 keeps in fp32 by default, per architecture: measured outliers, not guesses.

Dynamic int8 quantizes each MatMul's input per tensor at run time (one scale for the whole activation).
all-mpnet-base-v2's feed-forward activations carry outliers that one scale cannot hold: its int8 kept only
cosine 0.866 to fp32 (measured on 100 held-out reviews, fused graph, per-channel weights; per-tensor
weights 0.70, reduce_range no help, the unfused graph the same 0.865; the embeddings' Gather costs nothing:
0.999). Quantizing one kind of MatMul at a time across the 12 layers: FFN output 0.875, FFN input 0.991,
attention v 0.998, q/k/o 0.9998; by layer, 7 and 8 worst (0.977, 0.965). Keeping every FFN output in fp32
gives 0.989; plus the FFN inputs of the upper half (layers 6-11) 0.9925 at 70% of the fp32 size, about 1.2x
the fp32 graph's speed; plus every FFN input 0.998 but no faster than fp32 (interleaved rounds, b1/s128,
1 thread, on a shared 2-core machine). Everything int8 is 2.4x, at 0.867. BERT-style MiniLM needs none of this
(0.992 with everything int8).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# model_type (config.json) -> name patterns of MatMuls kept in fp32 by int8-dynamic unless the recipe says.
# "{upper}" stands for the layer numbers of the upper half of the encoder (6..11 of 12).
KEEP_FLOAT = {
    "mpnet": (r"/output/dense/MatMul$", r"/layer\.{upper}/intermediate/dense/MatMul$"),
}
LAYER = re.compile(r"/layer\.(\d+)/")


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
    model = onnx.load(str(model_path), load_external_data=False)
    names = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    layers = sorted({int(m.group(1)) for m in map(LAYER.search, names) if m})
    upper = "(?:" + "|".join(str(n) for n in layers[len(layers) // 2:]) + ")" if layers else "(?!)"
    compiled = [re.compile(p.replace("{upper}", upper)) for p in patterns]
    return [name for name in names if any(c.search(name) for c in compiled)]
