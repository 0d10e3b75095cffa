"""The PyTorch fp32 baseline of the bench stage (stages/bench.py), timed in its own process.

The stage runs this file by path, so that the worker does not depend on every stage of the registry
importing cleanly: it imports nothing of compress at module level.
"""

from __future__ import annotations

import json
from pathlib import Path


def torch_worker(argv: list[str]) -> int:
    """The PyTorch fp32 baseline, in its own process: same timing loop and result format as the harness."""
    import os
    import platform

    import numpy as np
    import torch

    from compress.targets import harness
    from compress.tasks import get_task

    task, args = get_task(argv[0]), harness.parse_args(argv[1:])
    model = task.load_model(Path(args.model)).eval()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with np.load(args.inputs) as data:
        feeds = [torch.from_numpy(data[n]) for n in task.INPUT_NAMES]  # built once, outside the loop
    with torch.inference_mode():
        samples = harness.time_loop(lambda: model(*feeds), args.warmup, args.min_iterations, args.min_seconds)
        batch, seq = feeds[0].shape[:2]
        result = {"status": "ok", "reason": None, "provider": "cpu", "providers_used": ["cpu"],
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(), "batch_size": int(batch),
                  "seq_len": int(seq), **harness.summarize(samples, int(batch)), "samples_ms": samples,
                  "peak_rss_mb": harness.peak_rss_mb()}
        if args.eval:
            torch.set_num_threads(os.cpu_count() or 1)  # the reference is not timed: use every core
            outputs = {f"b{i}_{task.OUTPUT_NAME}": model(*(torch.from_numpy(b[n]) for n in task.INPUT_NAMES)).numpy()
                       for i, b in enumerate(harness.eval_batches(args.eval))}
            np.savez(args.eval_out, **outputs)
    Path(args.out).write_text(json.dumps(harness.clean(result)))
    return 0
