"""Helpers shared by the benchmarks: running compress, naming and writing result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / ".work"


def run_compress(recipe: Path, out: Path, *sets: str) -> dict:
    """Run a recipe; return its report.json and the wall time of the command."""
    args = [sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True,
                          stdout=subprocess.PIPE, stderr=sys.stderr)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"compress run {recipe} failed (exit {proc.returncode})")
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    return {"report": report, "manifest": manifest, "wall_seconds": seconds}


def machine_tag() -> str:
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def results_path(name: str, suffix: str) -> Path:
    return RESULTS / f"{datetime.date.today().isoformat()}-{machine_tag()}-{name}{suffix}"


def write_results(name: str, markdown: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = results_path(name, "").name
    (RESULTS / f"{stem}.md").write_text(markdown)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS / stem}.md and .json")
    return RESULTS / f"{stem}.md"


def row(report: dict, variant: str, runtime: str = "onnxruntime") -> dict:
    return next(r for r in report["rows"] if r["variant"] == variant and r["runtime"] == runtime)
