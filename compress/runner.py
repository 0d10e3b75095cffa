"""The runner: stage order, cache keys, the manifest, locking and resumption.

A stage's cache key hashes its config, the task, the data (config and file content) and the hashes of every
artifact that exists when it starts. The chain is linear, so this is exact: a stage re-runs when anything it could
have read changed. The manifest is rewritten atomically after every stage, so a run killed at any point resumes
from the last finished stage. A stage marked `distributed` runs on `nproc` processes: the runner hands its
`rank_worker` to compress/launch.py (torchrun), and every rank runs the same stage function.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from rich.console import Console

from compress import __version__, teacher
from compress.artifacts import Artifact, check_not_linked, clean_temporaries, sha256_path, write_text_atomic
from compress.context import RunContext
from compress.errors import CompressError, StageError
from compress.inputs import check_paths, local_path
from compress.launch import launch
from compress.procs import raise_if_lost, stopped_in
from compress.ranks import rank_world
from compress.recipe import Recipe, dump_recipe, load_recipe
from compress.rundir import (
    RESOLVED_RECIPE,
    check_apart,
    claim,
    disk_errors,
    invalidate_reports,
    lock,
    read_json,
    read_manifest,
    write_manifest,
)
from compress.sources import resolve_local
from compress.stages import run_stage

VERSIONED = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pydantic")


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def run(recipe: Recipe, run_dir: Path, console: Console | None = None, nproc: int = 1,
        recipe_file: str | None = None, shared=None, locked: bool = False) -> dict:
    """Run every stage of `recipe` in `run_dir`, skipping those whose cache key is unchanged.

    One recipe without a `matrix`: a sweep (compress/sweep.py, the layer above) runs each of its variants through
    this function, with `shared` (its SharedCache: `lookup(key)`, `add(key, entry, produced, run_dir)`) finding
    stages another variant already computed. `locked`: the caller holds run_dir's lock already (compress bench
    takes it before writing its recipe there)."""
    console = console or Console(stderr=True)
    if recipe.matrix:
        raise CompressError(f"internal error: recipe {recipe.name} has a matrix: it is a sweep, run by "
                            "compress.sweep.run_any, not by the runner")
    check_paths(recipe, recipe_file if shared is None else None)  # missing inputs: file:line, exit 2, nothing written
    check_apart(run_dir, local_sources(recipe))  # a teacher or data inside the run dir, or the run dir inside them
    claim(run_dir)  # someone else's folder is refused; ours is marked before anything in it is replaced
    with disk_errors(run_dir), contextlib.nullcontext() if locked else lock(run_dir):
        # The manifest and reports are written atomically too: a kill leaves their temporaries beside them.
        removed = clean_temporaries(run_dir / "artifacts") + clean_temporaries(run_dir)
        if removed:
            console.print(f"[yellow]removed {removed} half-written file(s) left by an interrupted run[/]")
        invalidate_reports(run_dir)  # rewritten after a run that completes; a failed run leaves none to gate
        write_text_atomic(run_dir / RESOLVED_RECIPE, dump_recipe(recipe))
        previous = read_manifest(run_dir)
        manifest = _new_manifest(recipe, recipe_file)
        artifacts = {"teacher": teacher.resolve(recipe, run_dir)}
        manifest["artifacts"]["teacher"] = artifacts["teacher"].to_json(run_dir)
        manifest["provenance"] = _check_license(recipe, artifacts["teacher"])
        digest = data_hash(recipe)
        for stage in recipe.stages:
            with stopped_in(stage.name):
                key = _stage_key(recipe, stage, artifacts, digest)
                cached = _cached(previous, stage.name, key, run_dir)
                if cached is not None:
                    console.print(f"[green]✓[/] {stage.name}: cached (unchanged config and inputs)")
                    entry, produced = cached
                    entry = {k: v for k, v in entry.items() if k != "from"} | {"cache": "hit"}
                elif shared is not None and (hit := shared.lookup(key)) is not None:
                    entry, produced, origin = hit
                    console.print(f"[green]✓[/] {stage.name}: shared with variant {origin} (same config and inputs)")
                    entry = {**entry, "cache": "shared", "from": origin}
                else:
                    console.rule(f"[bold]{stage.name}[/] ({stage.kind})")
                    entry, produced = _run_stage(recipe, stage, key, artifacts, run_dir, console, nproc)
                    raise_if_lost()  # a Ctrl-C swallowed inside the stage stops the run here, before it is recorded
                    entry["cache"] = "computed"
                    console.print(f"[green]✓[/] {stage.name}: done in {entry['seconds']:.1f} s")
                    if shared is not None:
                        shared.add(key, entry, produced, run_dir)
                for artifact in produced:
                    artifacts[artifact.name] = artifact
                    manifest["artifacts"][artifact.name] = artifact.to_json(run_dir)
                manifest["stages"][stage.name] = entry
                write_manifest(run_dir, manifest)
        return manifest


def local_sources(recipe: Recipe) -> dict[str, Path]:
    """The recipe's inputs that are local files or folders: teacher.source, data.source, data.unlabeled.source."""
    found = {}
    named = [("teacher", recipe.teacher.source), ("data", recipe.data.source)]
    if getattr(recipe.data, "unlabeled", None) is not None:
        named.append(("data.unlabeled", recipe.data.unlabeled.source))
    for what, source in named:
        if source.startswith("python:"):
            continue
        path = local_path(source)
        if path is not None:
            found[f"{what}.source"] = path
    return found


def _run_stage(recipe, stage, key, artifacts, run_dir, console, nproc) -> tuple[dict, list[Artifact]]:
    ctx = RunContext(run_dir=run_dir, recipe=recipe, stage_name=stage.name, artifacts=dict(artifacts),
                     console=console)
    started = time.time()
    if nproc > 1 and getattr(stage, "distributed", False):
        produced = run_distributed(stage.name, run_dir, nproc, ctx.metrics)
    else:
        produced = run_stage(stage, ctx)
    entry = {
        "kind": stage.kind, "key": key, "status": "done", "started": started,
        "seconds": round(time.time() - started, 3), "metrics": ctx.metrics,
        "artifacts": [a.name for a in produced],
    }
    return entry, produced


def _cached(previous: dict, name: str, key: str, run_dir: Path) -> tuple[dict, list[Artifact]] | None:
    """The previous run's entry for this stage when its key matches and its artifacts are intact."""
    entry = previous.get("stages", {}).get(name)
    if not entry or entry.get("key") != key or entry.get("status") != "done":
        return None
    produced = []
    for artifact_name in entry["artifacts"]:
        data = previous["artifacts"].get(artifact_name)
        if data is None:
            return None
        artifact = Artifact.from_json(data, run_dir)
        # A stage's outputs live under artifacts/: an edited manifest must not point a later stage elsewhere.
        inside = artifact.path.resolve().is_relative_to((run_dir / "artifacts").resolve())
        if not inside or not artifact.path.exists() or sha256_path(artifact.path) != artifact.sha256:
            return None
        produced.append(artifact)
    return entry, produced


def _stage_key(recipe: Recipe, stage, artifacts: dict[str, Artifact], data_hash: str) -> str:
    payload = {
        "stage": stage.model_dump(mode="json", exclude={"name"}),
        "task": recipe.task,
        "teacher": recipe.teacher.model_dump(mode="json", exclude={"source"}),
        "data": data_hash,
        "inputs": sorted((a.name, a.sha256) for a in artifacts.values()),
        "compress": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_license(recipe: Recipe, teacher: Artifact) -> dict:
    """Stop before any stage when the teacher's licence forbids what the recipe does (unless acknowledged)."""
    from compress import licenses

    training = any(stage.kind in ("distill", "finetune") for stage in recipe.stages)
    decision = licenses.check_teacher(teacher.path, recipe.teacher.license, recipe.provenance.acknowledge,
                                      training=training)
    licenses.require(decision)
    return decision.to_json()


def data_hash(recipe: Recipe) -> str:
    digest = hashlib.sha256(json.dumps(recipe.data.model_dump(mode="json"), sort_keys=True).encode())
    path = resolve_local(recipe.data.source)  # None for an hf: dataset: its name and split stand for it
    if path is not None and path.exists():  # a file, a save_to_disk folder or a folder of class images
        digest.update(bytes.fromhex(sha256_path(path)))
    return digest.hexdigest()


def _new_manifest(recipe: Recipe, recipe_file: str | None) -> dict:
    return {
        "compress_version": __version__,
        "recipe_file": recipe_file,
        "recipe_sha256": recipe.fingerprint(),
        "recipe": recipe.model_dump(mode="json"),
        "versions": _versions(),
        "stages": {},
        "artifacts": {},
    }


def _versions() -> dict:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


# ---------------------------------------------------------------- a stage on N processes


# What rank 0 leaves in the stage's work dir for the runner: the produced artifacts, the metrics, or the error.
RESULT = "artifacts.json"
METRICS = "metrics.json"
ERROR = "error.txt"


def run_distributed(stage_name: str, run_dir: Path, nproc: int, metrics: dict | None = None) -> list[Artifact]:
    """Run stage `stage_name` of the run in `run_dir` on `nproc` processes (compress/launch.py); return rank 0's
    artifacts. Every rank rebuilds the run context from the files the runner wrote (recipe.resolved.yaml and the
    manifest's artifacts) and runs the SAME stage function. `metrics`, when given, is updated with the stage's
    metrics (also left in work/<stage>/metrics.json)."""
    run_dir = Path(run_dir).resolve()
    work = run_dir / "work" / stage_name
    check_not_linked(work, run_dir)  # the files below are deleted there: never through a link
    work.mkdir(parents=True, exist_ok=True)
    for name in (RESULT, METRICS, ERROR):
        (work / name).unlink(missing_ok=True)
    code = launch(rank_worker, [str(run_dir), stage_name], nproc)
    if (work / ERROR).is_file():
        raise StageError((work / ERROR).read_text(encoding="utf-8").strip())
    if code != 0 or not (work / RESULT).is_file():
        raise StageError(f"stage {stage_name}: distributed run on {nproc} processes failed "
                         f"(exit {code}); see the log above")
    if metrics is not None:
        metrics.update(read_json(work / METRICS))
    return [Artifact.from_json(a, run_dir) for a in json.loads((work / RESULT).read_text(encoding="utf-8"))]


class WorkerContext(RunContext):
    """The context of ranks other than 0: writing an artifact there is a bug, caught loudly."""

    def save(self, name, fmt, write, metadata=None):
        raise StageError(f"internal error: rank {rank_world()[0]} tried to save artifact {name!r}; "
                         "only rank 0 writes artifacts")


def rank_worker(run_dir: str, stage_name: str) -> int:
    """One rank of a distributed stage (called by compress/launch.py inside the process group)."""
    run_dir, rank = Path(run_dir), rank_world()[0]
    work = run_dir / "work" / stage_name
    try:
        ctx, cfg = _rank_context(run_dir, stage_name, rank)
        produced = run_stage(cfg, ctx)
        if rank == 0:
            write_text_atomic(work / METRICS, json.dumps(ctx.metrics, indent=2, default=str))
            write_text_atomic(work / RESULT, json.dumps([a.to_json(run_dir) for a in produced], indent=2))
        return 0
    except CompressError as exc:
        write_text_atomic(work / ERROR, f"{exc} (rank {rank})")
        print(f"rank {rank}: {exc}", file=sys.stderr)
        return 1


def _rank_context(run_dir: Path, stage_name: str, rank: int) -> tuple[RunContext, object]:
    recipe = load_recipe(run_dir / RESOLVED_RECIPE)
    artifacts = {"teacher": teacher.resolve(recipe, run_dir)}
    manifest = read_manifest(run_dir)
    # A manifest left by another recipe would hand us stale artifacts: use it only when it is this recipe's.
    if manifest.get("recipe_sha256") == recipe.fingerprint():
        for name, data in manifest.get("artifacts", {}).items():
            artifacts[name] = Artifact.from_json(data, run_dir)
    kind = RunContext if rank == 0 else WorkerContext
    ctx = kind(run_dir=run_dir, recipe=recipe, stage_name=stage_name, artifacts=artifacts,
               is_main_process=rank == 0)
    return ctx, recipe.stage_config(stage_name)
