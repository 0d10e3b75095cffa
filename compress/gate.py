"""Model CI: decide pass/fail from a run's report.json, optionally against a baseline report.json.

`compress gate` (and the GitHub Action in action.yml) calls `run_gate()`: it checks the quality budget, the
speed-up and the latency against a previous run (compress/compare.py), and writes markdown for a CI summary
or a PR comment. Only report.json files are read, never a model, so this runs in a blink on any CI machine.
Exit codes follow the CLI convention: 0 passed, 1 a gate failed, 2 usage error (GateUsageError).
"""

from __future__ import annotations

import math
from pathlib import Path

from compress.compare import GateUsageError, compare, load_report, round_medians
from compress.report import COLUMNS, CONSOLE_COLUMNS, recommend, row_label, table_cells

__all__ = ["GateUsageError", "gate", "load_report", "render_markdown", "run_gate", "write_github_output"]

DEFAULT_MAX_LATENCY_REGRESSION = 0.10
COMMENT_MARKER = "<!-- compress-gate -->"  # lets a CI step find and update its previous PR comment


def _threshold(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GateUsageError(f"--{name} {value!r}: expected a number >= 0")
    return float(value)


def _recipe_gate(report: dict, name: str) -> float | None:
    return next((c["threshold"] for c in (report.get("gates") or {}).get("checks", []) if c["gate"] == name), None)


def gate(report: dict, baseline: dict | None = None, *, max_quality_drop: float | None = None,
         min_speedup: float | None = None,
         max_latency_regression: float | None = DEFAULT_MAX_LATENCY_REGRESSION) -> dict:
    """Evaluate the gates; thresholds left None fall back to the recipe's gates recorded in the report."""
    max_drop = _threshold("max-quality-drop", max_quality_drop)
    speedup = _threshold("min-speedup", min_speedup)
    regression = _threshold("max-latency-regression", max_latency_regression)
    max_drop = max_drop if max_drop is not None else _recipe_gate(report, "max_quality_drop")
    speedup = speedup if speedup is not None else _recipe_gate(report, "min_speedup")
    budget = max_drop if max_drop is not None else report.get("max_quality_drop", 0.02)
    best, _ = recommend(report["rows"], report.get("select") or {}, budget)
    headline = report.get("headline", "cosine")
    checks = []
    if max_drop is not None:
        checks.append(_quality_check(report["rows"], best, max_drop, headline))
    if speedup is not None:
        checks.append(_speedup_check(best, speedup))
    comparison = None
    if baseline is not None:
        regression = DEFAULT_MAX_LATENCY_REGRESSION if regression is None else regression
        comparison = compare(report, baseline, regression)
        checks.append(_latency_check(comparison, regression))
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "best": best, "budget": budget,
            "comparison": comparison, "headline": headline}


def _quality_check(rows: list[dict], best: dict | None, threshold: float, headline: str) -> dict:
    check = {"gate": "max-quality-drop", "threshold": f"{threshold:g}", "passed": best is not None}
    if best is not None:
        check["value"] = f"{best['quality_drop']:.4f} ({best['variant']})"
        check["message"] = (f"max-quality-drop: {row_label(best)}: {headline} drop {best['quality_drop']:.4f} "
                            f"<= {threshold:g}")
        return check
    measured = [r for r in rows if r["status"] == "ok" and r.get("quality_drop") is not None]
    closest = min(measured, key=lambda r: r["quality_drop"], default=None)
    check["value"] = f"{closest['quality_drop']:.4f} (best)" if closest else "not measured"
    tail = f"; the closest is {row_label(closest)} with {closest['quality_drop']:.4f}" if closest else ""
    check["message"] = f"max-quality-drop: no variant keeps its {headline} drop within {threshold:g}{tail}"
    return check


def _speedup_check(best: dict | None, threshold: float) -> dict:
    check = {"gate": "min-speedup", "threshold": f"{threshold:g}x"}
    value = best.get("speedup") if best else None
    check["passed"] = value is not None and value >= threshold
    check["value"] = "-" if value is None else f"{value:.2f}x ({best['variant']})"
    if best is None:
        check["message"] = "min-speedup: no variant qualifies on quality, so there is no speed-up to check"
    elif value is None:
        check["message"] = f"min-speedup: {row_label(best)}: no speed-up measured (bench the teacher: baseline: true)"
    else:
        check["message"] = (f"min-speedup: {row_label(best)}: {value:.2f}x the teacher in PyTorch fp32 "
                            f"{'>=' if check['passed'] else '<'} {threshold:g}x")
    return check


def _latency_check(comparison: list[dict], threshold: float) -> dict:
    slower = [c for c in comparison if c["verdict"] == "slower"]
    compared = [c for c in comparison if c["delta"] is not None and not c["row"].get("is_baseline")]
    worst = max(slower or compared, key=lambda c: c["delta"], default=None)
    value = "nothing to compare" if worst is None else f"{worst['delta']:+.0%} ({worst['row']['variant']}"
    value += "" if worst is None else (")" if slower else f", {worst['verdict']})")
    check = {"gate": "max-latency-regression", "threshold": f"{threshold:.0%}", "passed": not slower, "value": value}
    messages = [_regression_message(c, threshold) for c in slower]
    if not messages:
        messages = [(f"max-latency-regression: no variant is slower than the baseline beyond {threshold:.0%} "
                     f"and the noise ({len(compared)} compared)")]
    check["message"] = "\n".join(messages)
    return check


def _regression_message(c: dict, threshold: float) -> str:
    now, then = round_medians(c["row"]), round_medians(c["base"])
    # Three significant digits: "27.9 ms" for a real model, "0.135 ms" for a tiny one.
    return (f"max-latency-regression: {c['label']}: p50 {c['row']['p50_ms']:.3g} ms vs {c['base']['p50_ms']:.3g} ms "
            f"baseline, {c['delta']:+.0%} > {threshold:.0%} (rounds {min(now):.3g}-{max(now):.3g} ms vs "
            f"{min(then):.3g}-{max(then):.3g} ms)")


# ---------------------------------------------------------------- rendering


def render_markdown(result: dict, report: dict, baseline_path: str | None = None) -> str:
    """The gate table, the decision table and the baseline comparison, for a CI summary or a PR comment."""
    best = result["best"]
    verdict = "✅ compress gate passed" if result["passed"] else "❌ compress gate FAILED"
    lines = [f"## {verdict}: {report.get('run') or 'run'}", ""]
    if best is not None:
        lines += [(f"**Best variant:** `{best['variant']}` on {row_label(best).split(' ', 1)[1]}, "
                   f"{result['headline']} drop {best['quality_drop']:.4f} (budget {result['budget']:g})"), ""]
    else:
        lines += [f"**Best variant:** none keeps its {result['headline']} drop within {result['budget']:g}", ""]
    if result["checks"]:
        lines += ["| gate | threshold | value | result |", "|---|---|---|---|"]
        lines += [f"| {c['gate']} | {c['threshold']} | {c['value']} | {'pass' if c['passed'] else '**FAIL**'} |"
                  for c in result["checks"]]
        failed = [line for c in result["checks"] if not c["passed"] for line in c["message"].splitlines()]
        lines += [""] + [f"- {line}" for line in failed] + ([""] if failed else [])
    else:
        lines += ["No gate set (recipe `gates:` or `--max-quality-drop`, `--min-speedup`, `--baseline`).", ""]
    keep = [COLUMNS.index(name) for name in CONSOLE_COLUMNS]
    header = [name.format(headline=result["headline"]) for name in CONSOLE_COLUMNS]
    lines += ["### Decision table", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        cells = table_cells(row, result["headline"])
        lines.append("| " + " | ".join(cells[i].replace("|", "/") for i in keep) + " |")
    if result["comparison"] is not None:
        lines += ["", f"### Against the baseline{f' ({baseline_path})' if baseline_path else ''}", "",
                  "Slower or faster only beyond the threshold and with no overlap of the per-round medians.", "",
                  (f"| variant | runtime/provider | setting | p50 ms | baseline | change | noise | "
                   f"{result['headline']} | baseline | change | verdict |"), "|" + "---|" * 11]
        lines += [_comparison_line(c) for c in result["comparison"]]
    return "\n".join(lines) + "\n"


def _comparison_line(c: dict) -> str:
    def f(value, spec):
        return "-" if value is None else format(value, spec)

    row, base = c["row"], c["base"] or {}
    variant, where, setting = c["label"].split(" ")
    now_row = row if c["verdict"] != "missing in this run" else {}
    cells = [variant, where, setting, f(now_row.get("p50_ms"), ".2f"), f(base.get("p50_ms"), ".2f"),
             f(c["delta"], "+.1%"), f(c["noise"], ".1%"), f(now_row.get("headline"), ".4f"),
             f(base.get("headline"), ".4f"), f(c["quality_delta"], "+.4f"),
             f"**{c['verdict']}**" if c["verdict"] == "slower" else c["verdict"]]
    return "| " + " | ".join(cells) + " |"


def write_github_output(path: str | Path, outputs: dict[str, str]) -> None:
    """Append name=value lines to a $GITHUB_OUTPUT file (heredoc syntax for multi-line values)."""
    with open(path, "a", encoding="utf-8") as handle:
        for name, value in outputs.items():
            value = str(value)
            if "\n" in value:
                handle.write(f"{name}<<COMPRESS_EOF\n{value}\nCOMPRESS_EOF\n")
            else:
                handle.write(f"{name}={value}\n")


def run_gate(report_path: str | Path, baseline: str | Path | None = None, *, summary: str | Path | None = None,
             comment: str | Path | None = None, github_output: str | Path | None = None, **thresholds) -> dict:
    """Load, evaluate, write the markdown files and outputs; return the result (the CLI maps it to 0/1)."""
    path, report = load_report(report_path)
    base_path, base = load_report(baseline, "baseline") if baseline else (None, None)
    result = gate(report, base, **thresholds)
    markdown = render_markdown(result, report, str(base_path) if base_path else None)
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(markdown)
    if comment:
        from compress.artifacts import write_text_atomic  # only a comment needs it

        Path(comment).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(comment), f"{COMMENT_MARKER}\n{markdown}")
    if github_output:
        best = result["best"]
        write_github_output(github_output, {"report-json": str(path), "passed": str(result["passed"]).lower(),
                                            "best-variant": best["variant"] if best else ""})
    result["report_path"], result["markdown"] = path, markdown
    return result
