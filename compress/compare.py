"""Run against run: per variant, provider and setting, latency and quality now vs a baseline report.json.

`compress compare` prints these entries; `compress gate --baseline` turns the slower ones into a failed gate.
A latency change counts only beyond a threshold AND beyond the noise of re-measuring (see `compare`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from compress.errors import CompressError
from compress.report import row_key, row_label


class GateUsageError(CompressError):
    """A gate cannot be evaluated as asked: missing or unreadable report, bad threshold (exit 2)."""

    exit_code = 2


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


def round_medians(row: dict) -> list[float]:
    """The row's per-round p50s (its p50 alone for reports that kept none)."""
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
    now, ref = round_medians(row), round_medians(reference)
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
    before = {row_key(r): r for r in baseline["rows"]}
    refs = (_references(report), _references(baseline))
    out = []
    for row in report["rows"]:
        base = before.pop(row_key(row), None)
        entry = {"row": row, "base": base, "label": row_label(row), "delta": None, "quality_delta": None,
                 "noise": None, "verdict": "new" if base is None else "not measured", "relative_delta": None}
        if base and (row.get("emulated") or base.get("emulated")):
            entry["verdict"] = "emulated: not compared"
        elif base and row["status"] == "ok" and base["status"] == "ok" and row.get("p50_ms") and base.get("p50_ms"):
            _judge(entry, row, base, refs, threshold)
        out.append(entry)
    out += [{"row": base, "base": base, "label": row_label(base), "delta": None, "quality_delta": None,
             "noise": None, "verdict": "missing in this run"} for base in before.values()]
    return out


def _judge(entry: dict, row: dict, base: dict, refs: tuple[dict, dict], threshold: float) -> None:
    """Fill in the latency and quality change of a row measured in both runs, and its verdict."""
    now, then = round_medians(row), round_medians(base)
    entry["delta"] = row["p50_ms"] / base["p50_ms"] - 1
    entry["noise"] = max(_spread(now), _spread(then))
    rel_now = _relative_rounds(row, refs[0].get(row["setting"]))
    rel_then = _relative_rounds(base, refs[1].get(base["setting"]))
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
