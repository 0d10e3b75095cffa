"""The torchrun launcher: run a worker function on N processes (torch DDP: gloo on CPU, nccl on CUDA).

`launch(worker, args, nproc)` starts `torchrun --standalone -m compress.launch <module> <qualname> <args>`;
every rank imports the worker by its module and qualified name (as pickle and multiprocessing do), joins the
process group, calls `worker(*args)` and leaves the group. What the worker does, and how its ranks hand results
back (files in a folder they share), is the caller's business: this module knows nothing above the ground floor.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from compress.errors import CompressError
from compress.procs import run_child


def launch(worker: Callable[..., int], args: Sequence[str], nproc: int) -> int:
    """Run `worker(*args)` on `nproc` processes under torchrun; return torchrun's exit code.

    `worker` must be a module-level function (each rank imports it); it returns its rank's exit code."""
    module, qualname = reference(worker)
    env = dict(os.environ)
    # torchrun would force 1 thread per process; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", __name__, module, qualname, *map(str, args)]
    # Children print progress on stderr; their stdout goes there too, keeping ours clean for results. Ctrl-C or
    # SIGTERM here: torchrun gets SIGTERM and ends its ranks; SIGKILL of this process: the kernel ends torchrun.
    return run_child(cmd, env=env, stdout=2)


def reference(worker: Callable) -> tuple[str, str]:
    """The (module, qualname) that imports `worker` back; refuses lambdas, closures and bound methods."""
    module, qualname = getattr(worker, "__module__", None), getattr(worker, "__qualname__", None)
    if not module or not qualname or module == "__main__" or resolve(module, qualname, strict=False) is not worker:
        raise CompressError(f"internal error: the worker {worker!r} is not a module-level function that "
                            "another process can import")
    return module, qualname


def resolve(module: str, qualname: str, strict: bool = True):
    """The object `qualname` of `module` (None when it is not there and not strict)."""
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        return found
    except (ImportError, AttributeError):
        if strict:
            raise
        return None


def rank_main(argv: Sequence[str]) -> int:
    """One rank: join the process group, run the worker, leave the group; the worker's return is the exit code."""
    import torch
    import torch.distributed as dist

    from compress.ranks import device

    module, qualname, *args = argv
    worker = resolve(module, qualname)
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        code = int(worker(*args) or 0)
        # Leave together: rank 0 still saves after the others are done, and tearing gloo down under a peer that
        # is still connected aborted a rank once ("terminate called without an active exception", SIGABRT).
        dist.barrier()
        return code
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
