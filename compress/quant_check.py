"""Every quantized artifact checked where it is made (layer: training : sensitivity : context).

`verify` runs onnx.checker, loads the model in an onnxruntime session and compares its outputs with the fp32
source's on held-out inputs: agreement of the top class for logits, cosine and largest difference for any
output. A model that fails any of these raises ArtifactCheckError with the true reason ("fp16 conversion
produced an unsorted graph"), so the quantize stage fails there, not a later stage with "corrupt".
"""

from __future__ import annotations

from pathlib import Path

from compress.errors import StageError

WHAT = {"fp16": "fp16 conversion", "int8-static": "int8-static quantization",
        "int8-dynamic": "int8-dynamic quantization",
        "int8-portable": "int8-portable quantization", "int4-weight": "int4-weight quantization"}


class ArtifactCheckError(StageError):
    """A scheme produced a model that is invalid, does not load, or computes non-finite outputs."""


def reason(scheme: str, message: str) -> str:
    """The checker's or onnxruntime's message as one sentence that names the true cause."""
    what = WHAT.get(scheme, scheme)
    first = (message.strip().splitlines() or [""])[0].strip()
    if "topologically sorted" in message:
        return f"{what} produced an unsorted graph ({first[:160]})"
    return f"{what} produced an invalid model ({first[:200]})"


def check_graph(path: Path, scheme: str) -> None:
    from compress.sources import checked

    try:
        checked(str(path))
    except Exception as exc:  # ValidationError, and onnx's C++ errors of other types
        raise ArtifactCheckError(reason(scheme, str(exc))) from None


def session(path: Path, provider: str = "CPUExecutionProvider", threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[provider])


def verify(path: Path, source: Path, feeds: list[dict], scheme: str) -> dict:
    """Check the model at `path` (a model.onnx) against its fp32 `source` on `feeds` (input batches).
    Returns {"checker": "ok", "examples", "agreement" (logits only), "cosine", "max_abs"}."""
    import numpy as np

    check_graph(path, scheme)
    try:
        candidate = session(path)
    except Exception as exc:  # onnxruntime's load errors are of its own private types
        raise ArtifactCheckError(f"{WHAT.get(scheme, scheme)} produced a model onnxruntime cannot load "
                                 f"({(str(exc).strip().splitlines() or [''])[0][:200]})") from None
    result: dict = {"checker": "ok", "examples": 0}
    if not feeds:
        return result
    reference = session(source)
    names = [i.name for i in candidate.get_inputs()]
    ours, theirs = [], []
    for batch in feeds:
        feed = {n: batch[n] for n in names}
        ours.append(np.asarray(candidate.run(None, feed)[0], dtype=np.float64))
        theirs.append(np.asarray(reference.run(None, feed)[0], dtype=np.float64))
    got, want = np.concatenate(ours), np.concatenate(theirs)
    if not np.all(np.isfinite(got)):
        bad = int(np.sum(~np.isfinite(got)))
        raise ArtifactCheckError(f"{WHAT.get(scheme, scheme)} produced a model whose outputs hold {bad} "
                                 f"non-finite value(s) (NaN or inf) on {len(got)} held-out examples")
    result.update(examples=int(len(got)), max_abs=round(float(np.max(np.abs(got - want))), 6),
                  cosine=round(_cosine(got, want), 6))
    if got.ndim == 2 and got.shape[1] > 1:
        result["agreement"] = round(float(np.mean(got.argmax(axis=1) == want.argmax(axis=1))), 6)
    one = first_example(feeds[0], candidate)
    result["speedup_b1"] = quick_speedup(session(source, threads=1), session(path, threads=1), one)
    size = len(next(iter(one.values()))) if one else 1
    if size != 1:  # a fixed batch axis: timed at its size
        result["speedup_batch"] = size
    return result


def first_example(batch: dict, session) -> dict:
    """The batch's first example as a feed; as many as a fixed batch axis takes (an input declared [2, 16]: the
    first two), since onnxruntime refuses any other size."""
    sizes = {i.name: i.shape[0] if i.shape else None for i in session.get_inputs()}
    return {n: batch[n][: s if isinstance(s, int) and s > 0 else 1] for n, s in sizes.items()}


def quick_speedup(reference, candidate, feed: dict, rounds: int = 3, seconds: float = 0.1) -> float | None:
    """fp32 p50 / candidate p50 at batch 1 (sessions of 1 thread), median of interleaved rounds (A B A B): a
    quick look on the quantizing machine, not the bench."""
    import statistics
    import time

    ratios = []
    for _ in range(rounds):
        p50 = []
        for sess in (reference, candidate):
            sess.run(None, feed)
            samples, end = [], time.perf_counter() + seconds
            while time.perf_counter() < end or len(samples) < 3:
                start = time.perf_counter()
                sess.run(None, feed)
                samples.append(time.perf_counter() - start)
            p50.append(statistics.median(samples))
        ratios.append(p50[0] / p50[1] if p50[1] > 0 else None)
    ratios = [r for r in ratios if r]
    return round(statistics.median(ratios), 3) if ratios else None


def _cosine(a, b) -> float:
    import numpy as np

    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-30), 1.0)
    return float(np.mean(cos))


def held_out_feeds(ctx, source, size: int = 128) -> list[dict]:
    """Up to `size` held-out examples of the recipe's data as the source model's input batches."""
    task = ctx.task
    if getattr(task, "NAME", None) == "causal-lm":  # its export also takes past key/values: checked and loaded only
        return []
    data = task.load_data(ctx.recipe.data)
    examples = task.examples(data.eval)[:size]
    if not len(examples):
        return []
    batches = task.inputs(source.path).batches(examples, ctx.recipe.data.max_length, 32)
    return [{k: v for k, v in b.items() if not k.startswith("_")} for b in batches]


def summary_line(name: str, size_bytes: int, ratio: float, check: dict, log_lines: int, log: Path | None,
                 base: Path | None = None) -> str:
    """One console line per artifact: size, agreement or cosine vs fp32, and the log when it has warnings."""
    parts = [f"{size_bytes / 1e6:.1f} MB ({ratio:.0%} of fp32)"]
    if "agreement" in check:
        parts.append(f"agreement {check['agreement']:.4f} with fp32 on {check['examples']} held-out")
    elif "cosine" in check:
        parts.append(f"cosine {check['cosine']:.4f} to fp32 on {check['examples']} held-out")
    speed = check.get("speedup_b1")
    if speed is not None:
        parts.append(f"{speed:.2f}x fp32's speed at batch {check.get('speedup_batch', 1)}"
                     + (" (slower: see the bench)" if speed < 0.95 else ""))
    if log_lines and log is not None:
        shown = log.relative_to(base) if base is not None and log.is_relative_to(base) else log
        parts.append(f"{log_lines} warning line(s) in {shown}")
    return f"  {name}: " + ", ".join(parts)
