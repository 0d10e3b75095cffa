"""`python -m compress.stages._parity TASK MODEL_DIR BUNDLE INPUTS_NPZ`: torch vs ONNX on the inputs, as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(task_name: str, model_dir: str, bundle: str, inputs_file: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from compress.tasks import get_task

    task = get_task(task_name)
    with np.load(inputs_file) as data:
        inputs = {n: data[n] for n in task.INPUT_NAMES}
    model = task.load_model(Path(model_dir)).eval()
    with torch.no_grad():
        expected = model(*(torch.from_numpy(inputs[n]) for n in task.INPUT_NAMES)).numpy()
    session = ort.InferenceSession(str(Path(bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)[0]
    count = len(expected)
    a, b = expected.reshape(count, -1), got.reshape(count, -1)
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"parity_max_abs": float(np.max(np.abs(a - b))), "parity_cosine": float(np.min(cos)),
            "parity_texts": count}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
