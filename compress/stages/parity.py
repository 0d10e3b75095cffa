"""`python -m compress.stages.parity`: torch vs ONNX outputs, in a process that did not export the model.

It reads one request per line on stdin, a JSON list [task, model_dir, bundle, inputs_npz], and answers each with
one line `PARITY {json}` on stdout (other libraries may print to stdout too: the prefix marks ours), until stdin
ends. One process serves every model of an export stage: its imports (torch, transformers, onnxruntime: about 5 s
here) are paid once, not once per model. It starts at the stage's first check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path

from compress.errors import StageError

PREFIX = "PARITY "


def compare(task_name: str, model_dir: str, bundle: str, inputs_file: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from compress.artifacts import model_file
    from compress.tasks import get_task

    task = get_task(task_name)
    with np.load(inputs_file) as data:
        inputs = {n: data[n] for n in task.INPUT_NAMES}
    model = task.load_model(Path(model_dir)).eval()
    with torch.no_grad():
        expected = model(*(torch.from_numpy(inputs[n]) for n in task.INPUT_NAMES)).numpy()
    session = ort.InferenceSession(str(model_file(Path(bundle))), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)[0]
    count = len(expected)
    a, b = expected.reshape(count, -1), got.reshape(count, -1)
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"parity_max_abs": float(np.max(np.abs(a - b))), "parity_cosine": float(np.min(cos)),
            "parity_texts": count, "nonfinite_outputs": int(np.sum(~np.isfinite(expected)))}


def serve(requests, answers) -> None:
    for line in requests:
        if not line.strip():
            continue
        try:
            result = compare(*json.loads(line))
        except Exception:  # noqa: BLE001 - the parent turns it into a StageError with this text
            result = {"error": traceback.format_exc()[-2000:]}
        answers.write(PREFIX + json.dumps(result) + "\n")
        answers.flush()


class ParityChecker:
    """One `compress.stages.parity` process for all of a stage's models. Ctrl-C or SIGTERM:
    __exit__ kills it; SIGKILL of this process: the kernel does (die_with_parent)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.errors = None

    def __enter__(self) -> ParityChecker:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            if exc[0] is None:
                try:
                    self.proc.stdin.close()  # the process ends at the end of its input
                except BrokenPipeError:  # it had died already
                    pass
            try:
                self.proc.wait(None if exc[0] is None else 0)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.errors.close()

    def start(self) -> None:
        import tempfile

        from compress.procs import die_with_parent

        if self.proc is None:
            self.errors = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty library cannot block it
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "compress.stages.parity"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self.errors, text=True, preexec_fn=die_with_parent)

    def check(self, task: str, model_dir: Path, bundle: Path, inputs_file: Path) -> dict:
        self.start()
        try:
            self.proc.stdin.write(json.dumps([task, str(model_dir), str(bundle), str(inputs_file)]) + "\n")
            self.proc.stdin.flush()
            line = next((line for line in self.proc.stdout if line.startswith(PREFIX)), None)
        except BrokenPipeError:
            line = None
        if line is None:  # the process died: its stderr says why
            self.errors.seek(0)
            raise StageError(f"export parity check failed to run:\n{self.errors.read().strip()[-2000:]}")
        result = json.loads(line[len(PREFIX):])
        if "error" in result:
            raise StageError(f"export parity check failed to run:\n{result['error'].strip()}")
        return result


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
