"""Device-side example: embed sentences with an exported compress bundle, using onnxruntime alone.

Needs only `onnxruntime`, `numpy` and `tokenizers` (no torch, no transformers, no compress):

    python embed.py BUNDLE_DIR "first sentence" "second sentence"

A bundle is what `compress run` writes under runs/<name>/artifacts/<variant>.onnx/: the graph (compress.json's
`model`: onnx/model.onnx; model.onnx at the root in older bundles), tokenizer.json and compress.json (task, output
name, max_length). Pooling is inside the graph. embed.mjs is the same in JavaScript (onnxruntime-web).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def load(bundle: Path, threads: int = 1):
    info = json.loads((bundle / "compress.json").read_text())
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tokenizer.enable_truncation(info.get("max_length", 128))
    tokenizer.enable_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = bundle / info.get("model", "model.onnx")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return info, tokenizer, session


def embed(bundle: Path, texts: list[str]) -> np.ndarray:
    info, tokenizer, session = load(bundle)
    encoded = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }
    wanted = {i.name for i in session.get_inputs()}
    return session.run([info["output"]], {k: v for k, v in feeds.items() if k in wanted})[0]


if __name__ == "__main__":
    vectors = embed(Path(sys.argv[1]), sys.argv[2:])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    print(json.dumps({"shape": list(vectors.shape), "cosine_matrix": np.round(unit @ unit.T, 4).tolist()}))
