"""Model CI: decide pass/fail from a run's report.json, optionally against a baseline report.json.

`compress gate` (and the GitHub Action in action.yml) calls `gate()`: it checks the quality budget, the
speed-up and the latency against a previous run, and writes markdown for a CI summary or a PR comment.
Only report.json files are read, never a model, so this runs in a blink on any CI machine.
Exit codes follow the CLI convention: 0 passed, 1 a gate failed, 2 usage error (GateUsageError).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path

from compress.errors import CompressError

DEFAULT_MAX_LATENCY_REGRESSION = 0.10
COMMENT_MARKER = "<!-- compress-gate -->"  # lets a CI step find and update its previous PR comment


class GateUsageError(CompressError):
    """A gate cannot be evaluated as asked: missing or unreadable report, bad threshold (exit 2)."""

    exit_code = 2


# ---------------------------------------------------------------- inputs


def load_report(path: str | Path, what: str = "report") -> tuple[Path, dict]:
    """Read a report.json given as the file, a run directory, or a folder holding exactly one (an artifact)."""
    path = Path(path)
    if path.is_dir():
        found = [path / "report.json"] if (path / "report.json").is_file() else sorted(path.rglob("report.json"))
        if len(found) != 1:
            raise GateUsageError(f"{what} {path}: {'no' if not found else 'more than one'} report.json in this "
                                 "folder; give the file itself")
        path = found[0]
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateUsageError(f"{what} {path}: no such file (run `compress run RECIPE` first)") from None
    except (OSError, ValueError) as exc:
        raise GateUsageError(f"{what} {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise GateUsageError(f"{what} {path}: not a compress report.json (no 'rows')")
    return path, report


def _threshold(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GateUsageError(f"--{name} {value!r}: expected a number >= 0")
    return float(value)


def _recipe_gate(report: dict, name: str) -> float | None:
    return next((c["threshold"] for c in (report.get("gates") or {}).get("checks", []) if c["gate"] == name), None)


# ---------------------------------------------------------------- evaluation


def key(row: dict) -> tuple:
    return (row["variant"], row.get("provider"), row["setting"])


def label(row: dict) -> str:
    """`teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1`: how a person names a row."""
    provider = (row.get("provider_used") or row.get("provider") or "-").removesuffix("ExecutionProvider")
    return f"{row['variant']} {row.get('runtime')}/{provider} {row['setting']}"


def _rounds(row: dict) -> list[float]:
    rounds = [v for v in row.get("rounds_p50_ms") or [] if isinstance(v, (int, float)) and math.isfinite(v)]
    return rounds or ([row["p50_ms"]] if row.get("p50_ms") else [])


def _spread(rounds: list[float]) -> float:
    return (max(rounds) - min(rounds)) / sorted(rounds)[len(rounds) // 2] if len(rounds) > 1 else 0.0


def _references(report: dict) -> dict:
    """The run's own reference row per setting: the teacher in PyTorch fp32 (the decision table's baseline)."""
    return {r["setting"]: r for r in report["rows"] if r.get("is_baseline") and r.get("status") == "ok"}


def _relative_rounds(row: dict, reference: dict | None) -> list[float] | None:
    """Per interleaved round, the row's p50 over the reference's: machine-wide slowdowns cancel out."""
    if reference is None or reference is row or reference.get("variant") == row.get("variant"):
        return None
    now, ref = _rounds(row), _rounds(reference)
    return [a / b for a, b in zip(now, ref)] if now and len(now) == len(ref) and all(ref) else None


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def compare(report: dict, baseline: dict, threshold: float) -> list[dict]:
    """Per variant+provider+setting: latency and quality now vs the baseline, and a verdict.

    A latency change counts only when it is beyond the threshold AND beyond the noise: the per-round
    medians of the two runs must not overlap (every round of one run slower than every round of the other).
    When both runs measured the teacher in the same interleaved rounds, the change must also show relative
    to that teacher (median of the per-round ratios): a machine that is busier during one run (a shared CI
    runner) slows the teacher and the variant alike and is not taken for a regression, while a change that
    slows every ONNX variant (a new onnxruntime) still is, since the PyTorch teacher does not move with it.
    """
    before = {key(r): r for r in baseline["rows"]}
    refs_now, refs_then = _references(report), _references(baseline)
    out = []
    for row in report["rows"]:
        base = before.pop(key(row), None)
        entry = {"row": row, "base": base, "label": label(row), "delta": None, "quality_delta": None,
                 "noise": None, "verdict": "new" if base is None else "not measured", "relative_delta": None}
        if base and (row.get("emulated") or base.get("emulated")):
            entry["verdict"] = "emulated: not compared"
        elif base and row["status"] == "ok" and base["status"] == "ok" and row.get("p50_ms") and base.get("p50_ms"):
            now, then = _rounds(row), _rounds(base)
            entry["delta"] = row["p50_ms"] / base["p50_ms"] - 1
            entry["noise"] = max(_spread(now), _spread(then))
            rel_now = _relative_rounds(row, refs_now.get(row["setting"]))
            rel_then = _relative_rounds(base, refs_then.get(base["setting"]))
            relative = _median(rel_now) / _median(rel_then) - 1 if rel_now and rel_then else None
            entry["relative_delta"] = relative
            if entry["delta"] > threshold and min(now) > max(then) and (relative is None or relative > threshold):
                entry["verdict"] = "reference slower" if row.get("is_baseline") else "slower"
            elif entry["delta"] < -threshold and max(now) < min(then) and (relative is None or relative < -threshold):
                entry["verdict"] = "faster"
            elif entry["delta"] > threshold and min(now) > max(then):
                entry["verdict"] = "same (the teacher slowed alike: machine load)"
            else:
                entry["verdict"] = "same"
            if row.get("headline") is not None and base.get("headline") is not None:
                entry["quality_delta"] = row["headline"] - base["headline"]
        out.append(entry)
    out += [{"row": base, "base": base, "label": label(base), "delta": None, "quality_delta": None, "noise": None,
             "verdict": "missing in this run"} for base in before.values()]
    return out


def gate(report: dict, baseline: dict | None = None, *, max_quality_drop: float | None = None,
         min_speedup: float | None = None,
         max_latency_regression: float | None = DEFAULT_MAX_LATENCY_REGRESSION) -> dict:
    """Evaluate the gates; thresholds left None fall back to the recipe's gates recorded in the report."""
    from compress.report import recommend

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
        check["message"] = f"max-quality-drop: {label(best)}: {headline} drop {best['quality_drop']:.4f} <= {threshold:g}"
        return check
    measured = [r for r in rows if r["status"] == "ok" and r.get("quality_drop") is not None]
    closest = min(measured, key=lambda r: r["quality_drop"], default=None)
    check["value"] = f"{closest['quality_drop']:.4f} (best)" if closest else "not measured"
    tail = f"; the closest is {label(closest)} with {closest['quality_drop']:.4f}" if closest else ""
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
        check["message"] = f"min-speedup: {label(best)}: no speed-up measured (bench the teacher: baseline: true)"
    else:
        check["message"] = (f"min-speedup: {label(best)}: {value:.2f}x the teacher in PyTorch fp32 "
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
    now, then = _rounds(c["row"]), _rounds(c["base"])
    # Three significant digits: "27.9 ms" for a real model, "0.135 ms" for a tiny one.
    return (f"max-latency-regression: {c['label']}: p50 {c['row']['p50_ms']:.3g} ms vs {c['base']['p50_ms']:.3g} ms "
            f"baseline, {c['delta']:+.0%} > {threshold:.0%} (rounds {min(now):.3g}-{max(now):.3g} ms vs "
            f"{min(then):.3g}-{max(then):.3g} ms)")


# ---------------------------------------------------------------- rendering


def render_markdown(result: dict, report: dict, baseline_path: str | None = None) -> str:
    """The gate table, the decision table and the baseline comparison, for a CI summary or a PR comment."""
    from compress.report import COLUMNS, CONSOLE_COLUMNS, _cells

    best = result["best"]
    verdict = "✅ compress gate passed" if result["passed"] else "❌ compress gate FAILED"
    lines = [f"## {verdict}: {report.get('run') or 'run'}", ""]
    if best is not None:
        lines += [(f"**Best variant:** `{best['variant']}` on {label(best).split(' ', 1)[1]}, "
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
        cells = _cells(row, result["headline"])
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
        from compress.artifacts import write_text_atomic

        Path(comment).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(comment), f"{COMMENT_MARKER}\n{markdown}")
    if github_output:
        best = result["best"]
        write_github_output(github_output, {"report-json": str(path), "passed": str(result["passed"]).lower(),
                                            "best-variant": best["variant"] if best else ""})
    result["report_path"], result["markdown"] = path, markdown
    return result


# ---------------------------------------------------------------- the GitHub Action's plan step


def split_overrides(text: str) -> list[str]:
    """The action's `set` input: one override per line, or on one line separated by spaces (shell quoting)."""
    text = (text or "").strip()
    if "\n" in text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return shlex.split(text)


def plan(recipe_file: str, set_text: str = "", providers: str = "", run_dir: str = "") -> dict:
    """Overrides, run directory and cache key of the action's run, from its inputs."""
    import hashlib

    from compress import __version__
    from compress.artifacts import sha256_path
    from compress.recipe import load_recipe
    from compress.sources import resolve_local

    overrides = split_overrides(set_text)
    names = [p for p in providers.replace(",", " ").split() if p]
    recipe = load_recipe(recipe_file, overrides)
    if names:
        benches = [i for i, stage in enumerate(recipe.stages) if stage.kind == "bench"]
        if not benches:
            raise GateUsageError(f"providers {providers!r}: the recipe {recipe_file} has no bench stage")
        overrides += [f"stages.{i}.providers=[{', '.join(names)}]" for i in benches]
        recipe = load_recipe(recipe_file, overrides)
    # The run cache must change with anything that changes the outputs: a hit restores finished stages.
    digest = hashlib.sha256(recipe.canonical_json().encode() + __version__.encode())
    for source, revision in ((recipe.teacher.source, recipe.teacher.revision), (recipe.data.source, None)):
        local = resolve_local(source)  # a hub id: its name and revision stand for its content
        digest.update((sha256_path(local) if local else f"{source}@{revision}").encode())
    prefix = f"compress-run-{platform.system()}-{recipe.name}-"
    return {"overrides": overrides, "run-dir": run_dir or f"runs/{recipe.name}",
            "cache-key": prefix + digest.hexdigest()[:24], "cache-prefix": prefix}


def _main(argv: list[str]) -> int:
    """`python -m compress.gate plan`: the action's plan step, reading INPUT_* and writing $GITHUB_OUTPUT."""
    if argv != ["plan"]:
        print("usage: python -m compress.gate plan  (reads INPUT_RECIPE, INPUT_SET, INPUT_PROVIDERS, "
              "INPUT_RUN_DIR; writes $GITHUB_OUTPUT)", file=sys.stderr)
        return 2
    env = os.environ
    try:
        result = plan(env.get("INPUT_RECIPE", ""), env.get("INPUT_SET", ""), env.get("INPUT_PROVIDERS", ""),
                      env.get("INPUT_RUN_DIR", ""))
    except CompressError as exc:
        print(f"::error::{str(exc).splitlines()[0]}\nerror: {exc}", file=sys.stderr)
        return exc.exit_code
    outputs = dict(result, overrides="\n".join(result["overrides"]))
    if env.get("GITHUB_OUTPUT"):
        write_github_output(env["GITHUB_OUTPUT"], outputs)
    print(json.dumps(outputs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
