"""Sweeps: a recipe's `matrix` expands into variants that run in one run directory and land in one report.

<run dir>/variants/<variant>/ is an ordinary run (manifest, artifacts, reports) of one combination. A stage
whose cache key (config + inputs, compress/runner.py) another variant already computed is not run again: its
entry says `cache: shared` and `from: <variant>`, and its artifacts stay where they were made. The sweep's own
manifest.json lists the variants, the values of each and how every stage was obtained; compress/report/sweep.py
ranks every measured row of every variant by the recipe's `select` objective into one report.json/report.md.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

from rich.console import Console

from compress import __version__, rundir, runner
from compress.artifacts import Artifact, sha256_path, write_text_atomic
from compress.errors import InputError
from compress.inputs import check_paths
from compress.recipe import Recipe, dump_recipe, expand_matrix

VARIANTS = "variants"
EXECUTOR = r"local|ray(=\S+)?"


class SharedCache:
    """Stage cache keys -> the entry and artifacts of the variant that computed them."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[dict, list[Artifact], str]] = {}
        self._checked: set[str] = set()

    def add(self, key: str, entry: dict, produced: list[Artifact], run_dir: Path) -> None:
        self._entries.setdefault(key, (entry, list(produced), Path(run_dir).name))
        self._checked.add(key)

    def load(self, run_dir: Path, manifest: dict) -> None:
        """Stages a previous run of a variant computed itself (their artifacts are under its folder)."""
        own = (run_dir / "artifacts").resolve()
        for entry in (manifest.get("stages") or {}).values():
            if entry.get("status") != "done" or entry.get("from"):
                continue
            data = [(manifest.get("artifacts") or {}).get(name) for name in entry.get("artifacts", [])]
            if any(d is None for d in data):
                continue
            produced = [Artifact.from_json(d, run_dir) for d in data]
            if all(a.path.resolve().is_relative_to(own) for a in produced):
                entry = {k: v for k, v in entry.items() if k != "cache"}
                self._entries.setdefault(entry["key"], (entry, produced, run_dir.name))

    def lookup(self, key: str) -> tuple[dict, list[Artifact], str] | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if key not in self._checked:  # from an earlier run: the files must still be what the manifest says
            if not all(a.path.exists() and sha256_path(a.path) == a.sha256 for a in found[1]):
                del self._entries[key]
                return None
            self._checked.add(key)
        entry, produced, origin = found
        return {k: v for k, v in entry.items() if k not in ("cache", "from")}, produced, origin


def run_any(recipe: Recipe, run_dir: Path, console: Console | None = None, nproc: int = 1,
            recipe_file: str | None = None, executor: str | None = None) -> dict:
    """Run a recipe: as a sweep when it has a `matrix`, else as one run (compress/runner.py); the manifest.

    `executor` (else the recipe's `executor`): `local` runs the variants one after another here; `ray` or
    `ray=ADDRESS` fans them out as Ray tasks (compress/fanout.py), ray imported only then."""
    console = console or Console(stderr=True)
    executor = executor or recipe.executor or "local"
    if not re.fullmatch(EXECUTOR, executor):
        raise InputError(f"executor {executor!r}: give local, ray or ray=ADDRESS (e.g. ray=auto, ray=ray://head:10001)")
    if recipe.matrix and executor != "local":
        from compress import fanout

        return fanout.run_sweep(recipe, run_dir, console, nproc, recipe_file, fanout.address(executor))
    if recipe.matrix:
        return run_sweep(recipe, run_dir, console, nproc, recipe_file)
    if executor != "local":
        console.print(f"[yellow]executor {executor}: the recipe has no matrix, so it runs here as one run[/]")
    return runner.run(recipe, run_dir, console=console, nproc=nproc, recipe_file=recipe_file)


def prepare(recipe: Recipe, run_dir: Path, recipe_file: str | None) -> list[tuple[str, dict, Recipe]]:
    """The variants of a sweep, once its inputs are checked and run_dir is claimed (nothing written before)."""
    variants = expand_matrix(recipe)
    check_paths(recipe, recipe_file)  # missing inputs: file:line, exit 2, before anything is written
    for _, _, variant in variants:  # a teacher or data inside the run dir, or the run dir inside them
        rundir.check_apart(run_dir, runner.local_sources(variant))
    rundir.claim(run_dir)  # someone else's folder is refused; ours is marked before anything in it is replaced
    return variants


def new_manifest(recipe: Recipe, recipe_file: str | None) -> dict:
    return {"compress_version": __version__, "recipe_file": recipe_file,
            "recipe_sha256": recipe.fingerprint(), "recipe": recipe.model_dump(mode="json"),
            "sweep": {"matrix": recipe.matrix, "variants": []}}


def variant_entry(name: str, values: dict, stages: dict, host: str, error: str | None = None) -> dict:
    """A variant in the sweep's manifest: its values, folder, the host it ran on and how each stage was obtained;
    `error`: the variant failed (status failed, its message), the sweep goes on."""
    entry = {"name": name, "values": values, "run_dir": f"{VARIANTS}/{name}",
             "stages": {stage: {"kind": e.get("kind"), "key": e.get("key"), "cache": e.get("cache"),
                                "from": e.get("from"), "seconds": e.get("seconds")}
                        for stage, e in stages.items()},
             "host": host, "status": "failed" if error else "done"}
    return entry | ({"error": error} if error else {})


def run_sweep(recipe: Recipe, run_dir: Path, console: Console, nproc: int = 1, recipe_file: str | None = None) -> dict:
    """Run every variant of `recipe`'s matrix in <run_dir>/variants/<variant>; the sweep's manifest."""
    run_dir = Path(run_dir)
    variants = prepare(recipe, run_dir, recipe_file)
    shared = SharedCache()
    for name, _, _ in variants:
        folder = run_dir / VARIANTS / name
        shared.load(folder, rundir.read_manifest(folder))
    with rundir.disk_errors(run_dir), rundir.lock(run_dir):
        rundir.invalidate_reports(run_dir)  # a sweep that fails or is stopped leaves no report older than its run
        write_text_atomic(run_dir / rundir.RESOLVED_RECIPE, dump_recipe(recipe))
        manifest = new_manifest(recipe, recipe_file)
        for index, (name, values, variant) in enumerate(variants):
            console.rule(f"[bold]variant {index + 1}/{len(variants)}: {name}[/]")
            folder = run_dir / VARIANTS / name
            result = runner.run(variant, folder, console=console, nproc=nproc, recipe_file=recipe_file, shared=shared)
            manifest["sweep"]["variants"].append(variant_entry(name, values, result["stages"], platform.node()))
            manifest["sweep"]["cache"] = cache_counts(manifest["sweep"]["variants"])
            rundir.write_manifest(run_dir, manifest)
        return manifest


def cache_counts(variants: list[dict]) -> dict:
    counts = {"computed": 0, "shared": 0, "hit": 0}
    for variant in variants:
        for stage in variant["stages"].values():
            counts[stage.get("cache") or "computed"] = counts.get(stage.get("cache") or "computed", 0) + 1
    return counts
