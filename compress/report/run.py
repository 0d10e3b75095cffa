"""Writing the reports of one run: report.json, report.md, report.html (+ pareto.png) and the model cards."""

from __future__ import annotations

import json
from pathlib import Path

from compress.artifacts import write_text_atomic
from compress.report.build import build_report
from compress.report.markdown import render_markdown
from compress.rundir import disk_errors, lock


def write_run_reports(run_dir: Path, manifest: dict) -> dict:
    """Build the report of a run, write report.json and report.md atomically, return the report."""
    run_dir = Path(run_dir)
    report = build_report(run_dir, manifest)
    # Under the run directory's lock (waiting for it): a run started meanwhile must not mix its reports with ours.
    with disk_errors(run_dir), lock(run_dir, wait=True):  # a full disk here is a message too
        write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
        write_text_atomic(run_dir / "report.md", render_markdown(report))
        from compress.report import html, model_card  # matplotlib loads only when a report is written

        html.render_html(run_dir, report, manifest)
        model_card.write_model_cards(run_dir, report, manifest)
    return report
