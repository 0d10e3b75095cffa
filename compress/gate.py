"""Model CI: decide pass/fail from a run's report.json, optionally against a baseline report.json.

`compress gate` (and the GitHub Action in action.yml) calls `run_gate()`: it checks the quality budget and the
speed-up of the best compressed variant (never the teacher's own rows), and against a previous run
(compress/compare.py) latency, quality and failed variants, and writes markdown for a CI summary or a PR comment.
A report in its run directory is rebuilt from the hash-checked bench results (compare.load_report); no model is
read, so this runs in a blink on any CI machine.
Exit codes follow the CLI convention: 0 passed, 1 a gate failed, 2 usage error or bad input (GateUsageError, and
any report the CLI cannot read: never 1, which CI takes for a failed gate).
"""

from __future__ import annotations

import contextlib
import errno
import math
from pathlib import Path

from compress.compare import (
    GateUsageError,
    NothingCompared,
    compare,
    finite,
    load_report,
    quality_budget,
    round_medians,
)
from compress.report import COLUMNS, CONSOLE_COLUMNS, recommend, row_label, table_cells
from compress.report.decision import drop_text, drop_upper

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
         max_latency_regression: float | None = DEFAULT_MAX_LATENCY_REGRESSION,
         max_quality_regression: float | None = None) -> dict:
    """Evaluate the gates; thresholds left None fall back to the recipe's gates recorded in the report.

    A report with no measured row (`rows: []`, a run without a bench stage, every row failed or skipped) fails
    with its reason: there is nothing to pass. With a baseline, latency and quality are both compared: a row whose
    headline fell by more than `max_quality_regression` (default: the recipe's max_quality_drop) fails."""
    max_drop = _threshold("max-quality-drop", max_quality_drop)
    speedup = _threshold("min-speedup", min_speedup)
    regression = _threshold("max-latency-regression", max_latency_regression)
    quality_regression = _threshold("max-quality-regression", max_quality_regression)
    max_drop = max_drop if max_drop is not None else _recipe_gate(report, "max_quality_drop")
    speedup = speedup if speedup is not None else _recipe_gate(report, "min_speedup")
    budget = max_drop if max_drop is not None else quality_budget(report)
    candidates = compressed_rows(report["rows"])
    best, _ = recommend(candidates, _select(report), budget)
    headline = report.get("headline", "cosine")
    checks = [] if _measured(report) else [_nothing_measured_check(report)]
    if _measured(report):  # with nothing measured, the check above says why already
        checks.append(_quality_check(report["rows"], best, budget, headline))
    if speedup is not None:
        against = "the fp32 ONNX input" if report.get("teacher_input") == "onnx" else "the teacher in PyTorch fp32"
        checks.append(_speedup_check(best, speedup, against))
    comparison = None
    if baseline is not None:
        regression = DEFAULT_MAX_LATENCY_REGRESSION if regression is None else regression
        try:
            comparison = compare(report, baseline, regression, quality_regression)
        except NothingCompared as exc:
            checks.append({"gate": "baseline", "threshold": "rows in common", "passed": False,
                           "value": "nothing compared", "message": str(exc)})
        else:
            checks.append(_quality_regression_check(comparison, quality_budget(report, quality_regression),
                                                     headline))
            checks.append(_failed_check(comparison))
            checks.append(_latency_check(comparison, regression))
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "best": best, "budget": budget,
            "comparison": comparison, "headline": headline}


def is_compressed(row: dict) -> bool:
    """A row the gate may pass: a distilled model (not the teacher's role) or a quantized one (not fp32).

    The teacher itself, in PyTorch or as its fp32 ONNX export, is the reference a compressed variant is measured
    against, not a compressed variant: with it in the running, the quality gate could never fail."""
    return row.get("role") != "teacher" or (row.get("precision") or "fp32") != "fp32"


def compressed_rows(rows: list[dict]) -> list[dict]:
    """The rows the gate judges: compressed variants whose headline quality and drop are numbers (NaN never
    qualifies, whatever a report says of it)."""
    return [r for r in rows if isinstance(r, dict) and is_compressed(r) and finite(r.get("headline")) is not None
            and finite(r.get("quality_drop")) is not None]


def _select(report: dict) -> dict:
    """The report's select, at the setting its recommendation is made at (the first row's, unless it names one):
    set here since the rows left for the gate may no longer start with it."""
    select = dict(report.get("select") or {})
    first = next((r for r in report["rows"] if isinstance(r, dict) and r.get("setting")), None)
    if not select.get("setting") and first is not None:
        select["setting"] = str(first["setting"]).split("@")[0]
    return select


def _verified_check(report: dict, baseline: dict | None) -> dict:
    """Whether the numbers judged are the run's hash-checked bench results or a report.json taken as written."""
    docs = [("report", report)] + ([("baseline", baseline)] if baseline is not None else [])
    unverified = [what for what, doc in docs if not doc.get("verified")]
    value = "unverified: " + " and ".join(unverified) if unverified else "verified"
    message = ("results: judged from the run's bench results, checked against manifest.json" if not unverified
               else f"results: the {' and the '.join(unverified)} judged as written in report.json, unverified "
                    "(not in its run directory); give the run directory to judge its hash-checked bench results")
    return {"gate": "results", "threshold": "hash-checked", "passed": True, "value": value, "message": message}


def _failed_check(comparison: list[dict]) -> dict:
    failed = [c for c in comparison if c.get("failed")]
    check = {"gate": "failed-variants", "threshold": "none", "passed": not failed,
             "value": ", ".join(c["row"]["variant"] for c in failed[:3]) + (", ..." if len(failed) > 3 else "")
             if failed else "none"}
    check["message"] = "\n".join(
        f"failed-variants: {c['label']}: {c['row'].get('status')} in this run"
        + (f" ({str(c['row'].get('reason')).splitlines()[0][:160]})" if c["row"].get("reason") else "")
        + (", measured in the baseline" if (c["base"] or {}).get("status") == "ok" else "") for c in failed
    ) if failed else "failed-variants: every variant of this run ran"
    return check


def _quality_check(rows: list[dict], best: dict | None, threshold: float, headline: str) -> dict:
    check = {"gate": "max-quality-drop", "threshold": f"{threshold:g}", "passed": best is not None}
    if best is not None:
        # The same rule as the report's recommendation: the drop's 95% upper bound within the budget.
        check["value"] = f"{drop_text(best)} ({best['variant']})"
        bound = " (its 95% upper bound)" if best.get("drop_ci") else ""
        check["message"] = (f"max-quality-drop: {row_label(best)}: {headline} drop {drop_text(best)}{bound} "
                            f"<= {threshold:g}")
        return check
    if not any(is_compressed(r) for r in rows if isinstance(r, dict)):
        teachers = ", ".join(dict.fromkeys(str(r.get("variant")) for r in rows if isinstance(r, dict)))
        check["value"] = "no compressed variant"
        check["message"] = (f"max-quality-drop: the report has no compressed variant, only the teacher's own rows "
                            f"({teachers}), which are the reference and never pass; add a quantize or distill stage")
        return check
    measured = [r for r in compressed_rows(rows) if r["status"] == "ok"]
    closest = min(measured, key=drop_upper, default=None)
    check["value"] = f"{_drop_with_interval(closest)} (best)" if closest else "not measured"
    tail = f"; the closest is {row_label(closest)} with {_drop_with_interval(closest)}" if closest else ""
    check["message"] = (f"max-quality-drop: no compressed variant keeps its {headline} drop within {threshold:g}"
                        f"{' (judged on its 95% upper bound)' if closest and closest.get('drop_ci') else ''}{tail}")
    return check


def _measured(report: dict) -> bool:
    return any(isinstance(r, dict) and r.get("status") == "ok" for r in report["rows"])


def _nothing_measured_check(report: dict) -> dict:
    rows = report["rows"]
    if not rows:
        why = "the report has no rows (rows: []): the run had no bench stage, or its bench measured nothing"
    else:
        statuses = sorted({str(r.get("status")) for r in rows if isinstance(r, dict)})
        why = f"no row of the report was measured (status: {', '.join(statuses) or 'none'})"
    return {"gate": "measured", "threshold": "a bench row", "passed": False, "value": f"{len(rows)} rows",
            "message": f"measured: {why}; nothing to gate"}


def _quality_regression_check(comparison: list[dict], budget: float, headline: str) -> dict:
    worse = [c for c in comparison if c.get("quality_regression")]
    compared = [c for c in comparison if c.get("quality_delta") is not None]
    check = {"gate": "max-quality-regression", "threshold": f"{budget:g}", "passed": not worse}
    if worse:
        check["value"] = ", ".join(f"{c['quality_delta']:+.4f} ({c['row']['variant']})" if c.get("quality_delta")
                                   is not None else f"not measured ({c['row']['variant']})" for c in worse[:3])
        check["message"] = "\n".join(
            f"max-quality-regression: {c['label']}: {headline} {_fmt(c['row'].get('headline'))} vs "
            f"{_fmt(c['base'].get('headline'))} baseline, "
            + (f"{c['quality_delta']:+.4f} beyond -{budget:g}" if c.get("quality_delta") is not None
               else "no quality measured now")
            for c in worse)
        return check
    worst = min(compared, key=lambda c: c["quality_delta"], default=None)
    check["value"] = ("nothing to compare" if worst is None
                      else f"{worst['quality_delta']:+.4f} ({worst['row']['variant']})")
    check["message"] = (f"max-quality-regression: no variant lost more than {budget:g} {headline} against the "
                        f"baseline ({len(compared)} compared)")
    return check


def _drop_with_interval(row: dict) -> str:
    interval = row.get("drop_ci")
    return _drop(row["quality_drop"]) + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def _drop(value: float) -> str:
    """A quality drop: 4 decimals, or 2 significant digits below them (a drop of 5.6e-08 is not 0.0000)."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-4 else f"{value:.1e}"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _speedup_check(best: dict | None, threshold: float, against: str = "the teacher in PyTorch fp32") -> dict:
    check = {"gate": "min-speedup", "threshold": f"{threshold:g}x"}
    value = best.get("speedup") if best else None
    check["passed"] = value is not None and value >= threshold
    check["value"] = "-" if value is None else f"{value:.2f}x ({best['variant']})"
    if best is None:
        check["message"] = "min-speedup: no variant qualifies on quality, so there is no speed-up to check"
    elif value is None:
        check["message"] = f"min-speedup: {row_label(best)}: no speed-up measured (bench the teacher: baseline: true)"
    else:
        check["message"] = (f"min-speedup: {row_label(best)}: {value:.2f}x {against} "
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
                   f"{result['headline']} drop {drop_text(best)} (budget {result['budget']:g}"
                   f"{', judged on the 95% upper bound' if best.get('drop_ci') else ''})"), ""]
    else:
        lines += [f"**Best variant:** no compressed variant keeps its {result['headline']} drop within "
                  f"{result['budget']:g}", ""]
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
             (f"**{c['verdict']}**" if c["verdict"] == "slower" else c["verdict"])
             + ("; **quality regression**" if c.get("quality_regression") else "")]
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


@contextlib.contextmanager
def _writing(path: str | Path, option: str):
    """A file the gate writes that cannot be written (a full disk, no permission) is named, never taken for an
    unreadable report (exit 2: the gate's verdict did not reach CI)."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        what = "the disk is full" if full else (exc.strerror or type(exc).__name__)
        raise GateUsageError(f"{option} {path}: could not write it ({what}); "
                             + ("free some space and run compress gate again" if full
                                else "give a file compress can write")) from None


def run_gate(report_path: str | Path, baseline: str | Path | None = None, *, summary: str | Path | None = None,
             comment: str | Path | None = None, github_output: str | Path | None = None, **thresholds) -> dict:
    """Load, evaluate, write the markdown files and outputs; return the result (the CLI maps it to 0/1)."""
    path, report = load_report(report_path)
    base_path, base = load_report(baseline, "baseline") if baseline else (None, None)
    result = gate(report, base, **thresholds)
    result["checks"].append(_verified_check(report, base))
    markdown = render_markdown(result, report, str(base_path) if base_path else None)
    if summary:
        with _writing(summary, "--summary"), open(summary, "a", encoding="utf-8") as handle:
            handle.write(markdown)
    if comment:
        from compress.artifacts import write_text_atomic  # only a comment needs it

        with _writing(comment, "--comment"):
            Path(comment).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(comment), f"{COMMENT_MARKER}\n{markdown}")
    if github_output:
        best = result["best"]
        with _writing(github_output, "--github-output"):
            write_github_output(github_output, {"report-json": str(path), "passed": str(result["passed"]).lower(),
                                                "best-variant": best["variant"] if best else ""})
    result["report_path"], result["markdown"] = path, markdown
    return result
