"""Run against run: per variant, provider and setting, latency and quality now vs a baseline report.json.

`compress compare` prints these entries; `compress gate --baseline` turns the slower ones into a failed gate.
A latency change counts only beyond a threshold AND beyond the noise of re-measuring (see `compare`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from compress.errors import CompressError, InputError
from compress.report import row_key, row_label

DEFAULT_QUALITY_BUDGET = 0.02  # as the report's default max_quality_drop


class GateUsageError(CompressError):
    """A gate cannot be evaluated as asked: missing or unreadable report, bad threshold (exit 2)."""

    exit_code = 2


class NothingCompared(CompressError):
    """No row of the new run is at the same variant, provider and setting as a row of the baseline: a comparison
    that compared nothing is a failure, not a pass (exit 1)."""


def load_report(path: str | Path, what: str = "report") -> tuple[Path, dict]:
    """Read a report.json given as the file, a run directory, or a folder holding exactly one (an artifact).

    A report.json in its run directory (beside a manifest.json that lists the run's artifacts) is not taken as
    written: the report is rebuilt from the bench results, each checked against the manifest's sha256, as
    `compress report` does, so an edited report.json cannot pass a gate. `report["verified"]` says which it was."""
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
    manifest = _run_manifest(path.parent)
    if manifest is None:
        return path, {**report, "verified": False}
    from compress.report import verified_report

    try:
        rebuilt = verified_report(path.parent, manifest)
    except InputError as exc:  # an edited, missing or linked bench result: name the report it belongs to
        raise GateUsageError(f"{what} {path}: {exc}") from None
    return path, {**rebuilt, "verified": True}


def _run_manifest(folder: Path) -> dict | None:
    """The manifest of the run directory `folder`, or None when it is no run's (no manifest, or one that lists
    no artifacts: a user's own manifest.json is not a run)."""
    from compress.rundir import MANIFEST, read_json

    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    sweep = manifest.get("sweep")
    if isinstance(sweep, dict) and isinstance(sweep.get("variants"), list):
        return manifest
    artifacts = manifest.get("artifacts")
    return manifest if isinstance(artifacts, dict) and isinstance(manifest.get("recipe"), dict) else None


def check_comparable(report: dict, baseline: dict) -> None:
    """Refuse, with one sentence, a baseline whose quality numbers mean something else: another task, another
    headline metric (agreement with the teacher is not accuracy on labels), or another quality reference."""
    def both(key):
        now, then = report.get(key), baseline.get(key)
        return (now, then) if now is not None and then is not None and now != then else None

    if pair := both("task"):
        raise GateUsageError(f"baseline: a {pair[1]} run, this run is {pair[0]}; compare runs of the same task "
                             "(the same recipe)")
    if pair := both("headline"):
        if set(pair) == {"accuracy", "agreement"}:
            raise GateUsageError(f"baseline: its quality is {pair[1]}, this run's is {pair[0]} (accuracy is on the "
                                 "data's labels, agreement is with the teacher's answers): the two are not "
                                 "comparable; compare runs whose labels fit the model alike")
        raise GateUsageError(f"baseline: its headline metric is {pair[1]}, this run's is {pair[0]}; compare runs "
                             "that measure the same metric")
    if pair := both("teacher_input"):
        kind = {"onnx": "an ONNX model", "pytorch": "a PyTorch model"}
        raise GateUsageError(f"baseline: its teacher (what quality is measured against) was "
                             f"{kind.get(pair[1], pair[1])}, this run's is {kind.get(pair[0], pair[0])}; compare "
                             "runs with the same teacher")


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


def compare(report: dict, baseline: dict, threshold: float, max_quality_regression: float | None = None) -> list[dict]:
    """Per variant+provider+setting: latency and quality now vs the baseline, and a verdict.

    Quality: a row whose headline fell by more than the budget (`max_quality_regression`, else the recipe's
    max_quality_drop recorded in the report) against the same row of the baseline is a quality regression
    (`quality_regression`), whatever its latency did.

    A latency change counts only when it is beyond the threshold AND beyond the noise: the per-round
    medians of the two runs must not overlap (every round of one run slower than every round of the other).
    When both runs measured the teacher in the same interleaved rounds, the change must also show relative
    to that teacher (median of the per-round ratios): a machine that is busier during one run (a shared CI
    runner) slows the teacher and the variant alike and is not taken for a regression, while a change that
    slows every ONNX variant (a new onnxruntime) still is, since the PyTorch teacher does not move with it.
    """
    check_comparable(report, baseline)
    before = {row_key(r): r for r in baseline["rows"]}
    refs = (_references(report), _references(baseline))
    budget = quality_budget(report, max_quality_regression)
    out = []
    for row in report["rows"]:
        base = before.pop(row_key(row), None)
        entry = {"row": row, "base": base, "label": row_label(row), "delta": None, "quality_delta": None,
                 "noise": None, "verdict": "new" if base is None else "not measured", "relative_delta": None}
        if base and (row.get("emulated") or base.get("emulated")):
            entry["verdict"] = "emulated: not compared"
        elif base and row["status"] == "ok" and base["status"] == "ok" and row.get("p50_ms") and base.get("p50_ms"):
            _judge(entry, row, base, refs, threshold)
        _judge_quality(entry, row, base, budget)
        _judge_failed(entry, row, base)
        out.append(entry)
    if not any(e["base"] is not None and not e["row"].get("is_baseline") for e in out):
        raise NothingCompared(_nothing_compared(report, baseline))
    out += [{"row": base, "base": base, "label": row_label(base), "delta": None, "quality_delta": None,
             "noise": None, "verdict": "missing in this run", "quality_regression": False, "failed": False}
            for base in before.values()]
    return out


def _nothing_compared(report: dict, baseline: dict) -> str:
    def settings(doc):
        found = sorted({str(r.get("setting")) for r in doc["rows"] if isinstance(r, dict)})
        return ", ".join(found[:4]) + (", ..." if len(found) > 4 else "") if found else "no rows"

    return (f"baseline: no variant of this run is at the same variant, provider and setting as one of the "
            f"baseline (this run: {settings(report)}; baseline: {settings(baseline)}), so nothing was compared; "
            "give a baseline of the same recipe")


# A row that ran into an error is broken; one skipped (out of time) was measured before and is not now. A provider
# this machine lacks (unavailable) says nothing of the model.
NOT_A_FAILURE = ("ok", "unavailable")


def _judge_failed(entry: dict, row: dict, base: dict | None) -> None:
    """A variant that failed in this run (an error; skipped where the baseline measured it) is a regression."""
    status = row.get("status")
    entry["failed"] = status not in NOT_A_FAILURE and (status != "skipped" or (base or {}).get("status") == "ok")
    if entry["failed"]:
        entry["verdict"] = f"{status} in this run"


def quality_budget(report: dict, explicit: float | None = None) -> float:
    """How much headline quality a row may lose against the baseline run: `explicit` (--max-quality-regression),
    else the recipe's max_quality_drop recorded in the report (its default 0.02 otherwise)."""
    if explicit is not None:
        return explicit
    value = finite(report.get("max_quality_drop"))
    return value if value is not None and value >= 0 else DEFAULT_QUALITY_BUDGET


def _judge_quality(entry: dict, row: dict, base: dict | None, budget: float) -> None:
    """The headline change of a row present in both runs; beyond `budget` down it is a quality regression, and so
    is a row that had a quality in the baseline and has none now while it ran (NaN outputs)."""
    entry["quality_regression"] = False
    if base is None or row.get("emulated") or base.get("emulated"):
        return
    then, now = finite(base.get("headline")), finite(row.get("headline"))
    if then is None:
        return
    if now is None:
        entry["quality_regression"] = row.get("status") in ("ok", "nan")
        return
    entry["quality_delta"] = now - then
    entry["quality_regression"] = now - then < -budget - 1e-12


def finite(value) -> float | None:
    """A finite number as float, else None (a hand-edited report may hold strings, booleans or NaN)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


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
    # The headline change (and whether it is a regression) is _judge_quality's, for every row in both runs.
