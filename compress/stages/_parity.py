"""`python -m compress.stages._parity TASK MODEL_DIR BUNDLE TEXTS_JSON MAX_LEN`: torch vs ONNX, as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(task_name: str, model_dir: str, bundle: str, texts_file: str, max_length: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from compress.tasks import get_task
    from compress.tasks.common import INPUT_NAMES, load_tokenizer, tokenize

    task = get_task(task_name)
    texts = json.loads(Path(texts_file).read_text())
    model = task.load_model(Path(model_dir)).eval()
    inputs = tokenize(load_tokenizer(Path(model_dir)), texts, int(max_length))
    with torch.no_grad():
        expected = model(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES)).numpy()
    session = ort.InferenceSession(str(Path(bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: inputs[n] for n in INPUT_NAMES})[0]
    a, b = expected.reshape(len(texts), -1), got.reshape(len(texts), -1)
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"parity_max_abs": float(np.max(np.abs(a - b))), "parity_cosine": float(np.min(cos)),
            "parity_texts": len(texts)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])))
