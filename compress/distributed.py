"""Run one stage on N processes with torch DDP (gloo on CPU, nccl on CUDA).

The runner calls `launch(stage, run_dir, nproc)`; it starts `torchrun --standalone -m compress.distributed`,
and every rank rebuilds the run context from files the runner wrote: `recipe.resolved.yaml` and the
artifacts of `manifest.json`. The SAME stage `run()` then runs on every rank; only rank 0 may save
artifacts (other ranks get a context whose `save` refuses), and rank 0 hands the produced artifacts and
metrics back as JSON files in the stage's work dir. The helpers below are no-ops in a single process, so a
stage written with them runs unchanged without torchrun.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from compress.artifacts import Artifact, write_text_atomic
from compress.context import RunContext
from compress.errors import CompressError, StageError

RESULT = "artifacts.json"
METRICS = "metrics.json"
ERROR = "error.txt"


def launch(stage_name: str, run_dir: Path, nproc: int, metrics: dict | None = None) -> list[Artifact]:
    """Run stage `stage_name` of the run in `run_dir` on `nproc` processes; return rank 0's artifacts.

    `metrics`, when given, is updated with the stage's metrics (also left in work/<stage>/metrics.json).
    """
    import subprocess

    run_dir = Path(run_dir).resolve()
    work = run_dir / "work" / stage_name
    work.mkdir(parents=True, exist_ok=True)
    for name in (RESULT, METRICS, ERROR):
        (work / name).unlink(missing_ok=True)
    env = dict(os.environ)
    # torchrun would force 1 thread per process; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "compress.distributed", str(run_dir), stage_name]
    # Children print progress on stderr; their stdout goes there too, keeping ours clean for results.
    proc = subprocess.run(cmd, env=env, stdout=2, check=False)
    if (work / ERROR).is_file():
        raise StageError((work / ERROR).read_text(encoding="utf-8").strip())
    if proc.returncode != 0 or not (work / RESULT).is_file():
        raise StageError(f"stage {stage_name}: distributed run on {nproc} processes failed "
                         f"(exit {proc.returncode}); see the log above")
    if metrics is not None and (work / METRICS).is_file():
        metrics.update(json.loads((work / METRICS).read_text(encoding="utf-8")))
    return [Artifact.from_json(a, run_dir) for a in json.loads((work / RESULT).read_text(encoding="utf-8"))]


# ---------------------------------------------------------------- helpers for stage code


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def wrap_ddp(module):
    """DDP around `module` when distributed; the module itself otherwise."""
    import torch

    if rank_world()[1] == 1:
        return module
    ids = [device().index] if device().type == "cuda" else None
    # Unused parameters exist (e.g. BERT's pooler under mean pooling): let DDP skip them.
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def all_max(value: float) -> float:
    """The largest `value` over ranks: keeps decisions such as 'stop now' identical everywhere."""
    import torch
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def gather_objects(obj) -> list:
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return [obj]
    out = [None] * rank_world()[1]
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- the child process


class _WorkerContext(RunContext):
    """The context of ranks other than 0: writing an artifact there is a bug, caught loudly."""

    def save(self, name, fmt, write, metadata=None):
        raise StageError(f"internal error: rank {rank_world()[0]} tried to save artifact {name!r}; "
                         "only rank 0 writes artifacts")


def _context(run_dir: Path, stage_name: str, rank: int):
    from compress import teacher
    from compress.recipe import load_recipe
    from compress.rundir import MANIFEST, RESOLVED_RECIPE

    recipe = load_recipe(run_dir / RESOLVED_RECIPE)
    artifacts = {"teacher": teacher.resolve(recipe, run_dir)}
    manifest_path = run_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    # A manifest left by another recipe would hand us stale artifacts: use it only when it is this recipe's.
    if manifest.get("recipe_sha256") == recipe.fingerprint():
        for name, data in manifest.get("artifacts", {}).items():
            artifacts[name] = Artifact.from_json(data, run_dir)
    kind = RunContext if rank == 0 else _WorkerContext
    ctx = kind(run_dir=run_dir, recipe=recipe, stage_name=stage_name, artifacts=artifacts,
               is_main_process=rank == 0)
    return ctx, recipe.stage_config(stage_name)


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    from compress.stages import run_stage

    run_dir, stage_name = Path((argv or sys.argv[1:])[0]), (argv or sys.argv[1:])[1]
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    work = run_dir / "work" / stage_name
    try:
        ctx, cfg = _context(run_dir, stage_name, rank)
        produced = run_stage(cfg, ctx)
        if rank == 0:
            write_text_atomic(work / METRICS, json.dumps(ctx.metrics, indent=2, default=str))
            write_text_atomic(work / RESULT, json.dumps([a.to_json(run_dir) for a in produced], indent=2))
        return 0
    except CompressError as exc:
        write_text_atomic(work / ERROR, f"{exc} (rank {rank})")
        print(f"rank {rank}: {exc}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
