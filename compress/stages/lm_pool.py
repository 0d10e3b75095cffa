"""The generate stage in several processes (`generate: {processes: N}`).

torch spreads a batch's matrix products over threads with poor scaling. On 2 cores, the smollm2 recipe's
generate stage wrote 1,024 completions in 230 s with two 1-thread processes and 307 s with one 2-thread process
(0.75x), the same text (python -m bench.lm_generate_procs). So the batches are dealt out to N worker processes,
each with its share of the threads and its own copy of the model; each appends its finished batches to its own
progress file (`<progress>.w<k>`), which the stage reads back like its own (a batch is seeded by its number, so
which process writes it does not matter, and an interrupted run resumes from all the files).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from compress.errors import StageError

MIN_WEIGHTS = 50 * 2**20  # below this a batch is too quick to pay for a second process and model load


def auto_processes(model_dir: Path, batches: int) -> int:
    """2 where it pays (2+ cores, 4+ batches, a model of MIN_WEIGHTS or more) and two copies fit, else 1."""
    import torch

    weights = sum(f.stat().st_size for f in Path(model_dir).iterdir()
                  if f.suffix in (".safetensors", ".bin") and f.is_file())
    if torch.get_num_threads() < 2 or batches < 4 or weights < MIN_WEIGHTS:
        return 1
    available = _available_memory()
    return 2 if available is not None and available > 4 * weights * 2 else 1


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def generate(cfg, ctx, source, todo: list, progress: Path, processes: int, tick) -> None:
    """The batches `todo` written by `processes` workers; tick() once per finished batch."""
    import torch

    from compress.procs import run_children

    threads = max(1, torch.get_num_threads() // processes)
    commands, outputs, logs, jobs = [], [], [], []
    for k in range(processes):
        job = ctx.work_dir / f"{progress.name}.job{k}.json"
        jobs.append(job)
        outputs.append(progress.with_name(f"{progress.name}.w{k}"))
        logs.append(ctx.work_dir / f"generate.worker{k}.log")
        job.write_text(json.dumps({"model": str(source.path), "trust_remote_code": ctx.recipe.teacher.trust_remote_code,
                                   "cfg": cfg.model_dump(mode="json"), "batches": todo[k::processes],
                                   "threads": threads, "out": str(outputs[-1])}))
        commands.append([sys.executable, "-c", "import sys; from compress.stages.lm_pool import worker_main; "
                         "sys.exit(worker_main(sys.argv[1]))", str(job)])
    finished = [_Lines(path) for path in outputs]

    def poll():
        for _ in range(sum(lines.new() for lines in finished)):
            tick()

    handles = [open(log, "w", encoding="utf-8") for log in logs]
    try:
        codes = run_children(commands, poll=poll, logs=handles)
    finally:
        for handle in handles:
            handle.close()
        for job in jobs:
            job.unlink(missing_ok=True)
    failed = [(k, code) for k, code in enumerate(codes) if code != 0]
    if failed:
        k, code = failed[0]
        tail = " | ".join(line.strip() for line in logs[k].read_text(errors="replace").strip().splitlines()[-2:])
        raise StageError(f"generate: worker {k} of {processes} failed (exit {code}; log {logs[k]}): "
                         f"{tail[:400].rstrip('.')}; the finished batches are kept: run again to resume")


class _Lines:
    """Complete lines (finished batches) appended to a worker's progress file since the last call: reads only the
    new bytes (the files grow to megabytes; the workers need the CPU)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        return chunk.count(b"\n")


def worker_main(job_file: str) -> int:
    """One worker: load the model, write its batches (python -c ... worker_main(job))."""
    import torch

    from compress.stages import generate as stage
    from compress.tasks.causal_lm import load_backbone, load_tokenizer

    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(job["threads"])
    cfg = stage.Config(**job["cfg"])
    tokenizer = load_tokenizer(Path(job["model"]), job["trust_remote_code"])
    tokenizer.padding_side = "left"
    model = load_backbone(Path(job["model"]), job["trust_remote_code"]).eval()
    with open(job["out"], "a", encoding="utf-8") as out:
        for index, rows in job["batches"]:
            stage.append_batch(out, index, stage.generate_batch(model, tokenizer, rows, cfg, index))
    return 0
