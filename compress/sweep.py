"""Sweeps: a recipe's `matrix` expands into variants that run in one run directory and land in one report.

<run dir>/variants/<variant>/ is an ordinary run (manifest, artifacts, reports) of one combination. A stage
whose cache key (config + inputs, compress/runner.py) another variant already computed is not run again: its
entry says `cache: shared` and `from: <variant>`, and its artifacts stay where they were made. The sweep's own
manifest.json lists the variants, the values of each and how every stage was obtained; report.json/report.md
rank every measured row of every variant by the recipe's `select` objective.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from compress import __version__, rundir, runner
from compress.artifacts import Artifact, sha256_path, write_text_atomic
from compress.recipe import Recipe, dump_recipe, expand_matrix

VARIANTS = "variants"


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
            recipe_file: str | None = None) -> dict:
    """Run a recipe: as a sweep when it has a `matrix`, else as one run (compress/runner.py); the manifest."""
    console = console or Console(stderr=True)
    if recipe.matrix:
        return run_sweep(recipe, run_dir, console, nproc, recipe_file)
    return runner.run(recipe, run_dir, console=console, nproc=nproc, recipe_file=recipe_file)


def run_sweep(recipe: Recipe, run_dir: Path, console: Console, nproc: int = 1, recipe_file: str | None = None) -> dict:
    """Run every variant of `recipe`'s matrix in <run_dir>/variants/<variant>; the sweep's manifest."""
    variants = expand_matrix(recipe)
    run_dir = Path(run_dir)
    with rundir.disk_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    shared = SharedCache()
    for name, _, _ in variants:
        folder = run_dir / VARIANTS / name
        shared.load(folder, rundir.read_manifest(folder))
    with rundir.disk_errors(run_dir), rundir.lock(run_dir):
        write_text_atomic(run_dir / rundir.RESOLVED_RECIPE, dump_recipe(recipe))
        manifest = {"compress_version": __version__, "recipe_file": recipe_file,
                    "recipe_sha256": recipe.fingerprint(), "recipe": recipe.model_dump(mode="json"),
                    "sweep": {"matrix": recipe.matrix, "variants": []}}
        for index, (name, values, variant) in enumerate(variants):
            console.rule(f"[bold]variant {index + 1}/{len(variants)}: {name}[/]")
            folder = run_dir / VARIANTS / name
            result = runner.run(variant, folder, console=console, nproc=nproc, recipe_file=recipe_file, shared=shared)
            manifest["sweep"]["variants"].append({
                "name": name, "values": values, "run_dir": f"{VARIANTS}/{name}",
                "stages": {stage: {"kind": e.get("kind"), "key": e.get("key"), "cache": e.get("cache"),
                                   "from": e.get("from"), "seconds": e.get("seconds")}
                           for stage, e in result["stages"].items()}})
            manifest["sweep"]["cache"] = _cache_counts(manifest["sweep"]["variants"])
            rundir.write_manifest(run_dir, manifest)
        return manifest


def _cache_counts(variants: list[dict]) -> dict:
    counts = {"computed": 0, "shared": 0, "hit": 0}
    for variant in variants:
        for stage in variant["stages"].values():
            counts[stage.get("cache") or "computed"] = counts.get(stage.get("cache") or "computed", 0) + 1
    return counts


# ---------------------------------------------------------------- the ranked report


def write_reports(run_dir: Path, manifest: dict) -> dict:
    """Every variant's own reports, then the sweep's report.json and report.md at the top."""
    from compress import report as reports
    from compress.rundir import disk_errors, read_manifest
    from compress.rundir import lock as _lock

    run_dir = Path(run_dir)
    per_variant = {}
    for variant in manifest["sweep"]["variants"]:
        folder = run_dir / variant["run_dir"]
        own = read_manifest(folder)
        result = reports.write_reports(folder, own)
        for row in result.get("rows", []):  # what identifies one model across variants
            row["artifact_sha256"] = ((own.get("artifacts") or {}).get(row["variant"]) or {}).get("sha256")
        per_variant[variant["name"]] = result
    result = build_report(manifest, per_variant)
    with disk_errors(run_dir), _lock(run_dir, wait=True):
        write_text_atomic(run_dir / "report.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
        write_text_atomic(run_dir / "report.md", render_markdown(result))
    return result


def build_report(manifest: dict, per_variant: dict[str, dict]) -> dict:
    """Rows of every variant (the same model measured the same way once), ranked by the select objective."""
    from compress import report as reports

    recipe = manifest.get("recipe") or {}
    first = next(iter(per_variant.values()), {})
    max_drop = first.get("max_quality_drop", reports.DEFAULT_MAX_DROP)
    select = {**(recipe.get("select") or {}), "max_quality_drop": max_drop}
    rows, seen = [], {}
    for variant in manifest["sweep"]["variants"]:
        for row in per_variant[variant["name"]].get("rows", []):
            same = (row.get("artifact_sha256") or f"{variant['name']}/{row['variant']}", row.get("runtime"),
                    row.get("provider"), row["setting"])
            if same in seen:
                seen[same]["also_in"].append(variant["name"])
                continue
            entry = {**row, "variant": f"{variant['name']}/{row['variant']}", "artifact": row["variant"],
                     "sweep_variant": variant["name"], "also_in": []}
            seen[same] = entry
            rows.append(entry)
    ranked = rank(rows, select, max_drop)
    best = ranked[0] if ranked and ranked[0].get("rank") == 1 else None
    return {
        "run": recipe.get("name"), "task": recipe.get("task"), "headline": first.get("headline", "cosine"),
        "sweep": True, "matrix": manifest["sweep"]["matrix"], "cache": manifest["sweep"].get("cache"),
        "baseline": first.get("baseline"), "max_quality_drop": max_drop, "select": select,
        "rows": ranked, "recommendation": best, "recommendation_text": _text(best, ranked, select, max_drop,
                                                                             first.get("headline", "cosine")),
        "gates": reports._gates(recipe.get("gates") or {}, best),
        "variants": [{**v, "recommendation": (per_variant[v["name"]].get("recommendation") or {}).get("variant"),
                      "accuracy": per_variant[v["name"]].get("accuracy") or {}}
                     for v in manifest["sweep"]["variants"]],
    }


def rank(rows: list[dict], select: dict, max_drop: float) -> list[dict]:
    """Rows that meet the constraints get rank 1.. by the objective (across settings: threads may be swept);
    the others follow without a rank, closest quality first."""
    from compress.report import OBJECTIVES, _provider_matches

    key = OBJECTIVES[select.get("objective") or "p50"]

    def qualifies(r: dict) -> bool:
        return (r["status"] == "ok" and r.get(key) is not None and r.get("quality_drop") is not None
                and r["quality_drop"] <= max_drop and not r.get("emulated") and "NaN" not in r.get("flags", [])
                and (not select.get("provider") or _provider_matches(r, select["provider"]))
                and (not select.get("max_size_mb") or (r.get("size_mb") or 0) <= select["max_size_mb"]))

    fit = sorted((r for r in rows if qualifies(r)), key=lambda r: (r[key], -(r.get("headline") or 0.0)))
    rest = sorted((r for r in rows if not qualifies(r)),
                  key=lambda r: (r["status"] != "ok", r.get("quality_drop") is None, r.get("quality_drop") or 0.0))
    return [{**r, "rank": i + 1} for i, r in enumerate(fit)] + [{**r, "rank": None} for r in rest]


def _text(best: dict | None, rows: list[dict], select: dict, max_drop: float, headline: str) -> str:
    objective = select.get("objective") or "p50"
    if best is None:
        return f"Nothing qualifies in the sweep ({headline} drop within {max_drop:g}, lowest {objective})."
    qualifying = sum(r["rank"] is not None for r in rows)
    speed = f", {best['speedup']:.2f}x the teacher" if best.get("speedup") else ""
    return (f"Use {best['variant']} at {best['setting']}: lowest {objective} of {qualifying} qualifying row(s) "
            f"across {len({r['sweep_variant'] for r in rows})} variant(s) (p50 {best['p50_ms']:.2f} ms{speed}, "
            f"{headline} {best['headline']:.4f}, drop {best['quality_drop']:.4f} <= {max_drop:g}).")


def render_markdown(result: dict) -> str:
    from compress.report import accuracy_lines

    headline = result.get("headline", "cosine")
    cache = result.get("cache") or {}
    lines = [f"# compress sweep: {result.get('run') or 'run'}", "",
             f"**Recommendation.** {result['recommendation_text']}", "",
             f"**Stages:** {cache.get('computed', 0)} computed, {cache.get('shared', 0)} shared between variants "
             f"(same config and inputs, computed once), {cache.get('hit', 0)} cached from an earlier run.", "",
             "## Ranking", "", f"Rank by {result['select'].get('objective') or 'p50'} among the rows whose {headline} "
             f"drop is within {result['max_quality_drop']:g}; speed-up and drop are against {result.get('baseline')}.",
             "", f"| rank | variant | setting | precision | size MB | p50 ms | speed-up | {headline} | drop | flags |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['rank'] or '-'} | {r['variant']} | {r['setting']} | {r.get('precision') or '-'} | "
                     f"{_f(r.get('size_mb'), '.1f')} | {_f(r.get('p50_ms'), '.2f')} | {_f(r.get('speedup'), '.2f')} | "
                     f"{_f(r.get('headline'), '.4f')} | {_f(r.get('quality_drop'), '.4f')} | "
                     f"{'; '.join(r.get('flags') or []).replace('|', '/')} |")
    lines += ["", "## Variants", "", "| variant | values | stages (computed / shared / cached) | its best |",
              "|---|---|---|---|"]
    for v in result["variants"]:
        how = [s.get("cache") or "computed" for s in v["stages"].values()]
        values = ", ".join(f"{k}={json.dumps(val)}" for k, val in v["values"].items())
        lines.append(f"| {v['name']} | {values} | {how.count('computed')} / {how.count('shared')} / "
                     f"{how.count('hit')} | {v.get('recommendation') or '-'} |")
    for v in result["variants"]:
        if v.get("accuracy"):
            lines += ["", f"## Accuracy search in {v['name']}", "", *accuracy_lines(v["accuracy"], headline)]
    return "\n".join(lines) + "\n"


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
