"""Rank helpers for stage code that may run on N processes under torch DDP (gloo on CPU, nccl on CUDA).

Every helper is a no-op in a single process, so a stage written with them runs unchanged without torchrun.
The launcher (compress/launch.py) starts the processes; torch is imported inside the functions.
"""

from __future__ import annotations

import os


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
