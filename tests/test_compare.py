"""`compress compare OLD NEW`: per-variant deltas; only changes beyond the threshold and the noise count."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def report(rows: dict[str, list[float]]) -> dict:
    return {"rows": [
        {"variant": name, "runtime": "onnxruntime", "provider": "CPUExecutionProvider", "setting": "b1/s128/t1",
         "status": "ok", "p50_ms": sorted(rounds)[len(rounds) // 2], "rounds_p50_ms": rounds, "headline": 0.99}
        for name, rounds in rows.items()]}


@pytest.mark.parametrize(
    "new_rounds, verdict",
    [
        ([10.1, 9.9, 10.0], "same"),  # identical within noise
        ([20.0, 20.4, 19.8], "slower"),  # work doubled
        ([11.5, 9.0, 10.5], "same"),  # +5% median and overlapping rounds: noise
        ([5.0, 5.1, 4.9], "faster"),
    ],
)
def test_compare_reports_only_regressions_beyond_noise(tmp_path, new_rounds, verdict):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(report({"model.int8.onnx": [10.0, 10.2, 9.8]})))
    new.write_text(json.dumps(report({"model.int8.onnx": new_rounds})))

    proc = subprocess.run([sys.executable, "-m", "compress.cli", "compare", str(old), str(new)],
                          capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""})

    assert proc.returncode == 0, proc.stderr
    assert verdict in proc.stdout
    regressions = proc.stdout.strip().splitlines()[-1]
    assert ("model.int8.onnx" in regressions) == (verdict == "slower")


def test_compare_names_a_missing_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "compare", str(tmp_path / "a"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr
