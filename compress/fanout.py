"""Sweeps fanned out on Ray (`compress run --executor ray[=ADDRESS]`): each matrix variant is a Ray task.

The run directory is the shared run store: every node must see it at the same path (NFS, or a local folder on one
machine). A task runs the ordinary runner (compress/runner.py) in <run dir>/variants/<variant>, so a variant writes
only under its own folder, under that folder's lock, and a task that Ray retries after its worker died resumes from
the last finished stage, as a local re-run does. Stages that variants share are computed once, as in a sequential
sweep: `plan` finds, from the stage configs alone, the earlier variant that computes the last stage a variant shares
with others, and the variant's task starts when that one has finished; it then finds the shared stages in the
store (sweep.SharedCache over the earlier variants' manifests). So the sweep's manifest and report are the
sequential sweep's, apart from timings and host names. A variant that fails is recorded as failed with its message
and the others go on; Ctrl-C cancels the tasks and removes what they left half-written.

ray is imported here only, and this module only when an executor other than `local` is asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from compress import rundir, runner, sweep
from compress.artifacts import clean_temporaries, write_text_atomic
from compress.errors import CompressError, InputError
from compress.recipe import Recipe, dump_recipe

RETRIES = 3  # Ray re-runs a task whose worker died (killed, out of memory) this many times
GPU_PROVIDERS = ("cuda", "tensorrt")
TRAINING = ("distill", "finetune")
CANCEL_WAIT_S = 30.0


def address(executor: str) -> str | None:
    """`ray` -> None (a Ray on this machine), `ray=ADDRESS` -> ADDRESS (auto, ray://head:10001, ...)."""
    kind, _, where = executor.partition("=")
    if kind != "ray":
        raise InputError(f"executor {executor!r}: give local, ray or ray=ADDRESS (e.g. ray=auto)")
    return where or None


def plan(variants: list[tuple[str, dict, Recipe]]) -> list[int | None]:
    """For each variant, the index of the earlier variant whose whole run it waits for: the one that computes the
    last stage they share (same task, teacher, data and stage configs up to it: the same cache key), or None."""
    owners: dict[str, int] = {}
    after: list[int | None] = []
    for index, (_, _, recipe) in enumerate(variants):
        waits = None
        for stage in range(len(recipe.stages)):
            owner = owners.setdefault(_prefix(recipe, stage), index)
            if owner != index:
                waits = owner
        after.append(waits)
    return after


def _prefix(recipe: Recipe, stage: int) -> str:
    return json.dumps({"task": recipe.task, "teacher": recipe.teacher.model_dump(mode="json"),
                       "data": recipe.data.model_dump(mode="json"),
                       "stages": [s.model_dump(mode="json", exclude={"name"}) for s in recipe.stages[:stage + 1]]},
                      sort_keys=True)


def resources(recipe: Recipe, nproc: int = 1, cluster: dict | None = None) -> dict:
    """What a variant's task asks Ray for: CPUs for its widest bench (threads) or distributed stage, so that
    variants timed at once on one node do not share cores; a GPU for a cuda/tensorrt bench, or for training (Ray
    hides GPUs from a task that asks for none). Never more than `cluster` (ray.cluster_resources()) has: a task
    that asks for more would wait forever; a cuda bench without a GPU reports cuda unavailable, as ever."""
    cluster = cluster or {}
    cpus, gpus = max(1, nproc), 0
    for stage in recipe.stages:
        if stage.kind == "bench":
            cpus = max(cpus, *stage.threads)
            names = [p if isinstance(p, str) else next(iter(p), "") for p in stage.providers]
            if any(name.lower().split("executionprovider")[0] in GPU_PROVIDERS for name in names):
                gpus = 1
        if stage.kind in TRAINING:
            gpus = 1
    return {"num_cpus": min(cpus, max(1, int(cluster.get("CPU", cpus)))),
            "num_gpus": gpus if cluster.get("GPU", 0) >= gpus else 0}


def run_sweep(recipe: Recipe, run_dir: Path, console: Console, nproc: int = 1, recipe_file: str | None = None,
              ray_address: str | None = None) -> dict:
    """Run every variant of `recipe`'s matrix as a Ray task in <run_dir>/variants/<variant>; the sweep's manifest
    (as sweep.run_sweep's, with each variant's host and status)."""
    ray = _import_ray()
    run_dir = Path(run_dir).resolve()  # tasks may run in another folder, or on another node
    variants = sweep.prepare(recipe, run_dir, recipe_file)
    started_here = not ray.is_initialized()
    if started_here:
        console.print(f"[bold]starting Ray[/] ({ray_address or 'on this machine'})")
        ray.init(**({"address": ray_address} if ray_address else {"include_dashboard": False}))
    try:
        with rundir.disk_errors(run_dir), rundir.lock(run_dir):
            rundir.invalidate_reports(run_dir)  # a sweep that fails or is stopped leaves no report older than its run
            write_text_atomic(run_dir / rundir.RESOLVED_RECIPE, dump_recipe(recipe))
            manifest = sweep.new_manifest(recipe, recipe_file)
            _fan_out(ray, variants, run_dir, manifest, console, nproc, recipe_file)
            return manifest
    finally:
        if started_here:
            ray.shutdown()


def _fan_out(ray, variants, run_dir: Path, manifest: dict, console: Console, nproc: int, recipe_file) -> None:
    task = ray.remote(run_variant)
    after = plan(variants)
    names = [name for name, _, _ in variants]
    cluster = ray.cluster_resources()
    waiting, running, done = list(range(len(variants))), {}, {}
    try:
        while len(done) < len(variants):
            for index in [i for i in waiting if after[i] is None or after[i] in done]:
                waiting.remove(index)
                name, _, variant = variants[index]
                ref = task.options(name=f"compress:{name}", max_retries=RETRIES,
                                   **resources(variant, nproc, cluster)).remote(
                    str(run_dir), names, index, variant.model_dump(mode="json"), nproc, recipe_file, os.getcwd())
                running[ref] = index
            ready, _ = ray.wait(list(running), num_returns=1)
            index = running.pop(ready[0])
            name, values, _ = variants[index]
            result = _result(ray, ready[0], run_dir / sweep.VARIANTS / name)
            done[index] = sweep.variant_entry(name, values, result["stages"], result["host"], result.get("error"))
            console.print(f"[{'green' if 'error' not in result else 'red'}]variant {escape(name)}: "
                          f"{escape(result.get('error') or 'done')}[/] on {escape(result['host'])} "
                          f"({len(done)}/{len(variants)})", highlight=False)
            manifest["sweep"]["variants"] = [done[i] for i in sorted(done)]  # matrix order, as a sequential sweep
            manifest["sweep"]["cache"] = sweep.cache_counts(manifest["sweep"]["variants"])
            rundir.write_manifest(run_dir, manifest)
    except BaseException:  # Ctrl-C, SIGTERM, a lost cluster: no task goes on writing into the store
        _cancel(ray, list(running), [run_dir / sweep.VARIANTS / name for name in names], console)
        raise


def _result(ray, ref, folder: Path) -> dict:
    """The task's result; a task that Ray gave up on (its worker died RETRIES + 1 times) is a failed variant."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        return {"error": _first_line(exc), "host": "unknown",
                "stages": rundir.read_manifest(folder).get("stages") or {}}


def _cancel(ray, refs: list, folders: list[Path], console: Console) -> None:
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)  # kills the worker: a stage in progress stops at once
    if refs:
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
    removed = sum(clean_temporaries(folder / "artifacts") + clean_temporaries(folder) for folder in folders)
    console.print(f"[yellow]cancelled {len(refs)} running variant(s); removed {removed} half-written file(s)[/]")


def run_variant(run_dir: str, names: list[str], index: int, recipe: dict, nproc: int, recipe_file: str | None,
                cwd: str) -> dict:
    """One variant, in a Ray worker: the runner in <run_dir>/variants/<name>, sharing the stages that earlier
    variants computed (their manifests in the store). Returns its stages and host, and `error` when it failed."""
    run_dir = Path(run_dir)
    folder = run_dir / sweep.VARIANTS / names[index]
    shared = sweep.SharedCache()
    for earlier in names[:index]:  # matrix order: the first variant that computed a stage is the one shared
        shared.load(run_dir / sweep.VARIANTS / earlier, rundir.read_manifest(run_dir / sweep.VARIANTS / earlier))
    # Relative teacher and data paths mean what they meant to the driver (when this node has its folder).
    with contextlib.chdir(cwd) if Path(cwd).is_dir() else contextlib.nullcontext():
        try:
            result = runner.run(Recipe.model_validate(recipe), folder, console=Console(stderr=True), nproc=nproc,
                                recipe_file=recipe_file, shared=shared)
        except Exception as exc:  # noqa: BLE001 - any failure is this variant's, reported in its row
            return {"error": _first_line(exc), "host": platform.node(),
                    "stages": rundir.read_manifest(folder).get("stages") or {}}
    return {"stages": result["stages"], "host": platform.node()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0][:300] if text else ""
    return detail if isinstance(exc, CompressError) else f"{type(exc).__name__}: {detail}"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'compress[ray]' (on every node of the cluster)") from None
    return ray
