"""The `compress` command: thin wrappers that build a Recipe and call the runner.

Nothing here imports torch or onnxruntime: `compress --help` and `compress validate` stay instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from compress.errors import CompressError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Distill, quantize, export and benchmark a model for the edge, from one YAML recipe.",
)
err = Console(stderr=True)
# Wide enough for the decision table when stdout is a file or a CI log (rich assumes 80 columns there).
out = Console() if Console().is_terminal else Console(width=160)

SET_HELP = "Override a recipe value, e.g. --set stages.0.epochs=2 (value parsed as YAML). Repeatable."


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="The recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory (default: runs/<recipe name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and stop."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes for distributed stages (torchrun, DDP)."),
    strict_providers: bool = typer.Option(
        False, "--strict-providers", help="Fail (exit 1) when a requested execution provider cannot run on a "
        "target, instead of reporting it as unavailable and benching the others."),
) -> None:
    """Run a recipe: every stage whose inputs changed, then the reports."""
    from compress.recipe import dump_recipe, load_recipe

    parsed = load_recipe(recipe, set_)
    if strict_providers:  # the same as strict_providers: true on every bench stage
        for stage in parsed.stages:
            if "strict_providers" in type(stage).model_fields:
                stage.strict_providers = True
    if dry_run:
        out.print(dump_recipe(parsed), end="", markup=False, highlight=False)
        return
    from compress import report, runner, sweep

    run_dir = out_dir or runner.default_run_dir(parsed)
    manifest = sweep.run_any(parsed, run_dir, console=err, nproc=nproc, recipe_file=str(recipe))
    result = report.write_reports(run_dir, manifest)
    out.print(report.decision_table(result))
    out.print(f"reports: {run_dir / 'report.md'}, {run_dir / 'report.json'}")


@app.command()
def validate(
    recipes: list[Path] = typer.Argument(..., help="Recipe files to check."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check recipes against the schema and the stage chain, without running anything."""
    from compress.errors import RecipeError
    from compress.recipe import load_recipe

    failed = False
    for path in recipes:
        try:
            load_recipe(path, set_)
            out.print(f"{path}: ok")
        except RecipeError as exc:
            print(exc, file=sys.stderr)
            failed = True
    if failed:
        raise typer.Exit(2)


@app.command()
def schema(
    output: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout."),
) -> None:
    """Print the recipe's JSON schema (for editor completion and validation)."""
    from compress.recipe import Recipe

    text = json.dumps(Recipe.model_json_schema(), indent=2) + "\n"
    if output:
        from compress.artifacts import write_text_atomic

        write_text_atomic(output, text)
    else:
        sys.stdout.write(text)


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A run directory holding manifest.json.")) -> None:
    """Re-render report.md and report.json of a finished run."""
    from compress import report, rundir

    manifest = rundir.read_manifest(run_dir)
    if not manifest:
        raise CompressError(f"{run_dir}: no manifest.json (is this a run directory?)")
    result = report.write_reports(run_dir, manifest)
    out.print(report.decision_table(result))


@app.command("gate")
def gate_cmd(
    report_json: Path = typer.Argument(..., help="The run's report.json (or its run directory)."),
    baseline: Path | None = typer.Option(None, "--baseline", help="A previous report.json (or run directory, or "
                                            "downloaded artifact folder) to compare latency and quality with."),
    max_quality_drop: float | None = typer.Option(None, help="Fail unless a variant loses at most this much "
                                                     "quality (default: the recipe's gate)."),
    min_speedup: float | None = typer.Option(None, help="Fail unless the best variant is this many times faster "
                                                "than the teacher in PyTorch (default: the recipe's gate)."),
    max_latency_regression: float = typer.Option(0.10, help="With --baseline: fail when a variant's p50 is slower "
                                                 "by more than this fraction and beyond the noise."),
    summary: Path | None = typer.Option(None, help="Append the markdown to this file (e.g. $GITHUB_STEP_SUMMARY)."),
    comment: Path | None = typer.Option(None, help="Write the markdown for a PR comment to this file."),
    github_output: Path | None = typer.Option(None, help="Append report-json, passed and best-variant to this "
                                                 "file (e.g. $GITHUB_OUTPUT)."),
) -> None:
    """Pass or fail a finished run for CI: exit 0 passed, 1 a gate failed, 2 usage error."""
    from compress.gate import run_gate

    result = run_gate(report_json, baseline, summary=summary, comment=comment, github_output=github_output,
                      max_quality_drop=max_quality_drop, min_speedup=min_speedup,
                      max_latency_regression=max_latency_regression)
    for check in result["checks"]:
        for line in check["message"].splitlines():
            (out if check["passed"] else err).print(f"{'pass' if check['passed'] else 'FAIL'}  {line}",
                                                    markup=False, highlight=False, soft_wrap=True)
    best = result["best"]
    out.print(f"gate {'passed' if result['passed'] else 'FAILED'}; best variant: "
              f"{best['variant'] if best else 'none'}", markup=False, highlight=False)
    if not result["passed"]:
        raise typer.Exit(1)


@app.command()
def compare(
    old: Path = typer.Argument(..., help="The earlier run: a run directory or its report.json."),
    new: Path = typer.Argument(..., help="The later run: a run directory or its report.json."),
    threshold: float = typer.Option(0.10, "--threshold", min=0, help="Latency change that counts (0.10 = 10%)."),
) -> None:
    """Latency and quality of each variant in NEW against OLD; a change inside the noise is not a regression."""
    from rich.table import Table

    from compress.compare import compare as compare_reports
    from compress.compare import load_report

    _, before = load_report(old, "old run")
    _, after = load_report(new, "new run")
    table = Table(title=f"compress compare: {old} -> {new}")
    for column in ("variant", "p50 old ms", "p50 new ms", "change", "vs teacher", "noise", "quality change",
                   "verdict"):
        table.add_column(column, justify="left" if column in ("variant", "verdict") else "right")
    entries = compare_reports(after, before, threshold)
    for e in entries:
        old_p50 = (e["base"] or {}).get("p50_ms") if e["base"] is not e["row"] else e["row"].get("p50_ms")
        new_p50 = e["row"].get("p50_ms") if e["base"] is not e["row"] else None
        table.add_row(e["label"], _num(old_p50), _num(new_p50), _num(e["delta"], "+.1%"), _num(e.get("relative_delta"), "+.1%"),
                      _num(e["noise"], ".0%"),
                      _num(e["quality_delta"], "+.4f"), e["verdict"],
                      style="bold red" if e["verdict"] == "slower" else None)
    out.print(table)
    slower = [e["label"] for e in entries if e["verdict"] == "slower"]
    out.print(f"regressions beyond {threshold:.0%} and the noise: {', '.join(slower) if slower else 'none'}")


def _num(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except CompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted:[/] finished stages are kept; run the same command again to resume")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # Usage errors from typer's bundled click: shown as click shows them, exit 2.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
