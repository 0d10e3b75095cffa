"""The report of a sweep: every variant's own reports, then one ranking of all their rows at the top.

Rows of one model measured the same way in several variants (a stage shared between them) appear once,
with `also_in` naming the others. Which rows may be ranked is the single run's rule (decision.eligibility).
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.artifacts import write_text_atomic
from compress.report.decision import DEFAULT_MAX_DROP, OBJECTIVES, check_gates, qualifies
from compress.report.markdown import accuracy_lines, fmt
from compress.report.run import write_run_reports
from compress.rundir import disk_errors, lock, read_manifest


def write_reports(run_dir: Path, manifest: dict) -> dict:
    """Every variant's own reports, then the sweep's report.json and report.md at the top."""
    run_dir = Path(run_dir)
    per_variant = {}
    for variant in manifest["sweep"]["variants"]:
        folder = run_dir / variant["run_dir"]
        own = read_manifest(folder)
        per_variant[variant["name"]] = tag_artifacts(write_run_reports(folder, own), own)
    result = build_report(manifest, per_variant)
    with disk_errors(run_dir), lock(run_dir, wait=True):
        write_text_atomic(run_dir / "report.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
        write_text_atomic(run_dir / "report.md", render_markdown(result))
    return result


def tag_artifacts(result: dict, manifest: dict) -> dict:
    """A variant's report with each row's artifact sha256: what identifies one model across variants."""
    for row in result.get("rows", []):
        row["artifact_sha256"] = ((manifest.get("artifacts") or {}).get(row["variant"]) or {}).get("sha256")
    return result


def build_report(manifest: dict, per_variant: dict[str, dict]) -> dict:
    """Rows of every variant (the same model measured the same way once), ranked by the select objective."""
    recipe = manifest.get("recipe") or {}
    first = next(iter(per_variant.values()), {})
    max_drop = first.get("max_quality_drop", DEFAULT_MAX_DROP)
    select = {**(recipe.get("select") or {}), "max_quality_drop": max_drop}
    ranked = rank(_merged_rows(manifest, per_variant), select, max_drop)
    best = ranked[0] if ranked and ranked[0].get("rank") == 1 else None
    headline = first.get("headline", "cosine")
    return {
        "run": recipe.get("name"), "task": recipe.get("task"), "headline": headline,
        "sweep": True, "matrix": manifest["sweep"]["matrix"], "cache": manifest["sweep"].get("cache"),
        "baseline": first.get("baseline"), "max_quality_drop": max_drop, "select": select,
        "rows": ranked, "recommendation": best,
        "recommendation_text": _text(best, ranked, select, max_drop, headline),
        "gates": check_gates(recipe.get("gates") or {}, best),
        "variants": [{**v, "recommendation": (per_variant[v["name"]].get("recommendation") or {}).get("variant"),
                      "accuracy": per_variant[v["name"]].get("accuracy") or {}}
                     for v in manifest["sweep"]["variants"]],
    }


def _merged_rows(manifest: dict, per_variant: dict[str, dict]) -> list[dict]:
    """Every variant's rows, named `<variant>/<artifact>`; a model already seen at that setting is noted, not added."""
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
    return rows


def rank(rows: list[dict], select: dict, max_drop: float) -> list[dict]:
    """Rows that meet the constraints get rank 1.. by the objective (across settings: threads may be swept);
    the others follow without a rank, closest quality first."""
    key = OBJECTIVES[select.get("objective") or "p50"]
    fit = sorted((r for r in rows if qualifies(r, select, max_drop)),
                 key=lambda r: (r[key], -(r.get("headline") or 0.0)))
    rest = sorted((r for r in rows if not qualifies(r, select, max_drop)),
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
                     f"{fmt(r.get('size_mb'), '.1f')} | {fmt(r.get('p50_ms'), '.2f')} | "
                     f"{fmt(r.get('speedup'), '.2f')} | {fmt(r.get('headline'), '.4f')} | "
                     f"{fmt(r.get('quality_drop'), '.4f')} | {'; '.join(r.get('flags') or []).replace('|', '/')} |")
    return "\n".join(lines + _variant_lines(result["variants"], headline)) + "\n"


def _variant_lines(variants: list[dict], headline: str) -> list[str]:
    lines = ["", "## Variants", "", "| variant | values | stages (computed / shared / cached) | its best |",
             "|---|---|---|---|"]
    for v in variants:
        how = [s.get("cache") or "computed" for s in v["stages"].values()]
        values = ", ".join(f"{k}={json.dumps(val)}" for k, val in v["values"].items())
        lines.append(f"| {v['name']} | {values} | {how.count('computed')} / {how.count('shared')} / "
                     f"{how.count('hit')} | {v.get('recommendation') or '-'} |")
    for v in variants:
        if v.get("accuracy"):
            lines += ["", f"## Accuracy search in {v['name']}", "", *accuracy_lines(v["accuracy"], headline)]
    return lines
