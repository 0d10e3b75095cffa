"""Reports of a run: the decision table, a recommendation, the gates, as report.json, report.md, report.html
and model cards; for a sweep, one ranking of every variant's rows as well.

Everything comes from the manifest and the bench artifacts' results.json: no model is loaded here, so
`compress report RUN_DIR` re-renders a finished run in a blink. This package imports only the run-dir I/O,
artifacts, licences and tasks: runner, sweep and the CLI call it, never the other way round.

- decision: decision rows, flags, eligibility, the recommendation, gates; row label, "where", row id
- build: the report dict of one run;  run: writing one run's files;  sweep: the sweep's ranked report
- markdown: report.md and the terminal table;  html + charts: report.html, pareto.png;  model_card
"""

from __future__ import annotations

from pathlib import Path

from compress.report.build import accuracy_searches, build_report
from compress.report.decision import (
    DEFAULT_MAX_DROP,
    OBJECTIVES,
    eligibility,
    provider_matches,
    qualifies,
    recommend,
    row_id,
    row_key,
    row_label,
    setting_label,
    where,
)
from compress.report.markdown import (
    COLUMNS,
    CONSOLE_COLUMNS,
    accuracy_lines,
    decision_table,
    render_markdown,
    table_cells,
)

__all__ = [
    "COLUMNS", "CONSOLE_COLUMNS", "DEFAULT_MAX_DROP", "OBJECTIVES", "accuracy_lines", "accuracy_searches",
    "build_report", "decision_table", "eligibility", "provider_matches", "qualifies", "recommend",
    "render_markdown", "row_id", "row_key", "row_label", "setting_label", "table_cells", "verified_report", "where",
    "write_reports",
]


def write_reports(run_dir: Path, manifest: dict) -> dict:
    """Write the reports of a run (or of a sweep and each of its variants); return the top report."""
    if manifest.get("sweep"):
        from compress.report import sweep

        return sweep.write_reports(Path(run_dir), manifest)
    from compress.report.run import write_run_reports

    return write_run_reports(Path(run_dir), manifest)


def verified_report(run_dir: Path, manifest: dict) -> dict:
    """The report of a finished run (or sweep) rebuilt in memory from its bench results, each checked against the
    sha256 its manifest recorded (rundir.verify_artifacts: one sentence naming an edited file), as
    `compress report` does; nothing is written. What `compress gate` and `compress compare` judge."""
    from compress.rundir import read_manifest, verify_artifacts

    run_dir = Path(run_dir)
    if not manifest.get("sweep"):
        verify_artifacts(run_dir, manifest)
        return build_report(run_dir, manifest)
    from compress.report import sweep

    per_variant = {}
    for variant in manifest["sweep"]["variants"]:
        if variant.get("status") == "failed":  # a row that says why (sweep.build_report), nothing to verify
            per_variant[variant["name"]] = {}
            continue
        folder = run_dir / variant["run_dir"]
        own = read_manifest(folder)
        verify_artifacts(folder, own)
        per_variant[variant["name"]] = sweep.tag_artifacts(build_report(folder, own), own)
    return sweep.build_report(manifest, per_variant)
