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

LATENCIES = ("p50_ms", "p90_ms", "p99_ms")


def write_reports(run_dir: Path, manifest: dict) -> dict:
    """Every variant's own reports, then the sweep's report.json and report.md at the top."""
    run_dir = Path(run_dir)
    per_variant = {}
    for variant in manifest["sweep"]["variants"]:
        if variant.get("status") == "failed":  # its row says why; a failed run has no reports (as a single run)
            per_variant[variant["name"]] = {}
            continue
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
    first = next((v for v in per_variant.values() if v), {})
    max_drop = first.get("max_quality_drop", DEFAULT_MAX_DROP)
    select = {**(recipe.get("select") or {}), "max_quality_drop": max_drop}
    rows = _merged_rows(manifest, per_variant)
    hosts = sorted({r["host"] for r in rows if r.get("host")})
    ranked = rank(rows, select, max_drop, by_speedup=len(hosts) > 1)
    best = ranked[0] if ranked and ranked[0].get("rank") == 1 else None
    headline = first.get("headline", "cosine")
    return {
        "run": recipe.get("name"), "task": recipe.get("task"), "headline": headline,
        "sweep": True, "matrix": manifest["sweep"]["matrix"], "cache": manifest["sweep"].get("cache"),
        **({"hosts": hosts} if len(hosts) > 1 else {}),
        "baseline": first.get("baseline"), "max_quality_drop": max_drop, "select": select,
        "rows": ranked, "recommendation": best,
        "recommendation_text": _text(best, ranked, select, max_drop, headline, len(hosts) > 1),
        "gates": check_gates(recipe.get("gates") or {}, best),
        "variants": [{**v, "recommendation": (per_variant[v["name"]].get("recommendation") or {}).get("variant"),
                      "accuracy": per_variant[v["name"]].get("accuracy") or {}}
                     for v in manifest["sweep"]["variants"]],
    }


def _merged_rows(manifest: dict, per_variant: dict[str, dict]) -> list[dict]:
    """Every variant's rows, named `<variant>/<artifact>`; a model already seen at that setting is noted, not added."""
    rows, seen = [], {}
    for variant in manifest["sweep"]["variants"]:
        if variant.get("status") == "failed":
            rows.append({"variant": variant["name"], "artifact": None, "sweep_variant": variant["name"],
                         "status": "failed", "reason": variant.get("error"), "setting": "-", "also_in": [],
                         "host": variant.get("host"), "flags": [f"variant failed: {variant.get('error')}"]})
            continue
        for row in per_variant[variant["name"]].get("rows", []):
            # One model timed the same way on one host; the same on two hosts is two measurements.
            same = (row.get("artifact_sha256") or f"{variant['name']}/{row['variant']}", row.get("runtime"),
                    row.get("provider"), row["setting"], row.get("host"))
            if same in seen:
                seen[same]["also_in"].append(variant["name"])
                continue
            entry = {**row, "variant": f"{variant['name']}/{row['variant']}", "artifact": row["variant"],
                     "sweep_variant": variant["name"], "also_in": []}
            seen[same] = entry
            rows.append(entry)
    return rows


def rank(rows: list[dict], select: dict, max_drop: float, by_speedup: bool = False) -> list[dict]:
    """Rows that meet the constraints get rank 1.. by the objective (across settings: threads may be swept);
    the others follow without a rank, closest quality first. `by_speedup` (rows timed on several hosts): a latency
    objective ranks by speed-up instead, a ratio to the baseline timed on the row's own host."""
    key = OBJECTIVES[select.get("objective") or "p50"]
    fit = [r for r in rows if qualifies(r, select, max_drop)]
    if by_speedup and key in LATENCIES:
        fit = sorted((r for r in fit if r.get("speedup")), key=lambda r: (-r["speedup"], -(r.get("headline") or 0.0)))
    else:
        fit = sorted(fit, key=lambda r: (r[key], -(r.get("headline") or 0.0)))
    ranked = {id(r) for r in fit}
    rest = [r for r in rows if id(r) not in ranked]
    rest = sorted(rest, key=lambda r: (r["status"] != "ok", r.get("quality_drop") is None, r.get("quality_drop") or 0.0))
    return [{**r, "rank": i + 1} for i, r in enumerate(fit)] + [{**r, "rank": None} for r in rest]


def _text(best: dict | None, rows: list[dict], select: dict, max_drop: float, headline: str,
          by_speedup: bool = False) -> str:
    objective = select.get("objective") or "p50"
    how = f"lowest {objective}"
    if by_speedup and OBJECTIVES[objective] in LATENCIES:
        how = "highest speed-up over its own host's baseline (timed on several hosts)"
    if best is None:
        return f"Nothing qualifies in the sweep ({headline} drop within {max_drop:g}, lowest {objective})."
    qualifying = sum(r["rank"] is not None for r in rows)
    speed = f", {best['speedup']:.2f}x the teacher" if best.get("speedup") else ""
    where = f" on {best['host']}" if by_speedup and best.get("host") else ""
    return (f"Use {best['variant']} at {best['setting']}{where}: {how} of {qualifying} qualifying row(s) "
            f"across {len({r['sweep_variant'] for r in rows})} variant(s) (p50 {best['p50_ms']:.2f} ms{speed}, "
            f"{headline} {best['headline']:.4f}, drop {best['quality_drop']:.4f} <= {max_drop:g}).")


def render_markdown(result: dict) -> str:
    headline = result.get("headline", "cosine")
    hosts = bool(result.get("hosts"))
    cache = result.get("cache") or {}
    lines = [f"# compress sweep: {result.get('run') or 'run'}", "",
             f"**Recommendation.** {result['recommendation_text']}", "",
             f"**Stages:** {cache.get('computed', 0)} computed, {cache.get('shared', 0)} shared between variants "
             f"(same config and inputs, computed once), {cache.get('hit', 0)} cached from an earlier run.", "",
             "## Ranking", "", f"Rank by {result['select'].get('objective') or 'p50'} among the rows whose {headline} "
             f"drop is within {result['max_quality_drop']:g}; speed-up and drop are against {result.get('baseline')}.",
             *_host_lines(result.get("hosts")),
             "", f"| rank | variant | setting |{' host |' * hosts} precision | size MB | p50 ms | speed-up | "
             f"{headline} | drop | flags |", "|---|---|---|" + "---|" * hosts + "---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        host = f" {r.get('host') or '-'} |" if hosts else ""
        lines.append(f"| {r['rank'] or '-'} | {r['variant']} | {r['setting']} |{host} {r.get('precision') or '-'} | "
                     f"{fmt(r.get('size_mb'), '.1f')} | {fmt(r.get('p50_ms'), '.2f')} | "
                     f"{fmt(r.get('speedup'), '.2f')} | {fmt(r.get('headline'), '.4f')} | "
                     f"{fmt(r.get('quality_drop'), '.4f')} | {'; '.join(r.get('flags') or []).replace('|', '/')} |")
    return "\n".join(lines + _variant_lines(result["variants"], headline)) + "\n"


def _host_lines(hosts: list[str] | None) -> list[str]:
    if not hosts:
        return []
    return ["", f"**Hosts.** This sweep ran on {len(hosts)} hosts ({', '.join(hosts)}): latencies are compared only "
            "within one host. A latency objective ranks by speed-up, each row's ratio to the baseline timed on its "
            "own host; p50 values of different hosts are not comparable."]


def _variant_lines(variants: list[dict], headline: str) -> list[str]:
    lines = ["", "## Variants", "", "| variant | values | stages (computed / shared / cached) | its best |",
             "|---|---|---|---|"]
    for v in variants:
        how = [s.get("cache") or "computed" for s in v["stages"].values()]
        values = ", ".join(f"{k}={json.dumps(val)}" for k, val in v["values"].items())
        best = f"failed: {v.get('error')}".replace("|", "/") if v.get("status") == "failed" else None
        lines.append(f"| {v['name']} | {values} | {how.count('computed')} / {how.count('shared')} / "
                     f"{how.count('hit')} | {best or v.get('recommendation') or '-'} |")
    for v in variants:
        if v.get("accuracy"):
            lines += ["", f"## Accuracy search in {v['name']}", "", *accuracy_lines(v["accuracy"], headline)]
    return lines
