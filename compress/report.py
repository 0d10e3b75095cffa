"""Reports of a run: the decision table, a recommendation, the gates, as report.json and report.md.

Everything comes from the manifest and the bench artifacts' results.json: no model is loaded here,
so `compress report RUN_DIR` re-renders a finished run in a blink.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from compress.artifacts import write_text_atomic

DEFAULT_MAX_DROP = 0.02  # the recommendation's quality budget when the recipe sets no gate
NOISY_SPREAD = 0.15  # per-round medians further apart than this (relative) make a row "noisy"
DISTILL_KEYS = ("teacher_params", "student_params", "quality_before", "quality_after")


def write_reports(run_dir: Path, manifest: dict) -> dict:
    """Build the report of a run, write report.json and report.md atomically, return the report."""
    from compress.runner import _lock, disk_errors

    run_dir = Path(run_dir)
    report = build_report(run_dir, manifest)
    # Under the run directory's lock (waiting for it): a run started meanwhile must not mix its reports with ours.
    with disk_errors(run_dir), _lock(run_dir, wait=True):  # a full disk here is a message too
        write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
        write_text_atomic(run_dir / "report.md", render_markdown(report))
        from compress import model_card, report_html  # matplotlib loads only when a report is written

        report_html.render_html(run_dir, report, manifest)
        model_card.write_model_cards(run_dir, report, manifest)
    return report


def build_report(run_dir: Path, manifest: dict) -> dict:
    recipe = manifest.get("recipe") or {}
    docs = _bench_results(Path(run_dir), manifest)
    headline = _headline(recipe.get("task"))
    gates = recipe.get("gates") or {}
    max_drop = gates.get("max_quality_drop")
    max_drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
    rows = _decision_rows([row for doc in docs for row in doc["rows"]], headline, max_drop)
    best = _recommend(rows, max_drop)
    return {
        "run": recipe.get("name"), "task": recipe.get("task"), "headline": headline,
        "baseline": "teacher in PyTorch fp32 at the same batch size, sequence length and threads",
        "max_quality_drop": max_drop,
        "environment": docs[0]["environment"] if docs else {},
        "settings": docs[0]["settings"] if docs else {},
        "rows": rows,
        "recommendation": best,
        "recommendation_text": _recommendation_text(best, rows, headline, max_drop),
        "gates": _gates(gates, best),
        "distillation": _distillation(manifest, headline),
        "stages": {name: {k: s.get(k) for k in ("kind", "status", "seconds")}
                   for name, s in (manifest.get("stages") or {}).items()},
        "trust": _trust(recipe, manifest),
    }


def _trust(recipe: dict, manifest: dict) -> dict:
    """Whether the model's own Python code could run, and how its weights were read (shown in every report)."""
    teacher = recipe.get("teacher") or {}
    meta = ((manifest.get("artifacts") or {}).get("teacher") or {}).get("metadata") or {}
    return {"trust_remote_code": bool(teacher.get("trust_remote_code")),
            "remote_code": meta.get("remote_code") or [],
            "allow_pickle": bool(teacher.get("allow_pickle")), "weights": meta.get("weights")}


def _trust_line(trust: dict | None) -> str:
    if not trust:
        return "**Model code:** unknown (older manifest)."
    code = (f"ON (teacher.trust_remote_code: true; the model ships {', '.join(trust['remote_code']) or 'no code'})"
            if trust["trust_remote_code"] else "off: no Python code shipped with the model was run")
    weights = {"safetensors": "safetensors", "pickle": "pickle-based, allowed by teacher.allow_pickle, read with "
               "torch.load(weights_only=True)"}.get(trust.get("weights"), trust.get("weights") or "unknown")
    return f"**Model code:** trust_remote_code {code}. **Weights:** {weights}."


def _bench_results(run_dir: Path, manifest: dict) -> list[dict]:
    docs = []
    for artifact in (manifest.get("artifacts") or {}).values():
        if artifact.get("format") == "bench":
            path = Path(artifact["path"])
            path = path if path.is_absolute() else run_dir / path
            doc = json.loads((path / "results.json").read_text(encoding="utf-8"))
            for row in doc["rows"]:
                row["bench"] = artifact["name"]
            docs.append(doc)
    return docs


def _headline(task: str | None) -> str:
    if not task:
        return "cosine"
    try:
        from compress.tasks import get_task

        return get_task(task).HEADLINE
    except (ImportError, KeyError, AttributeError):
        return "cosine"


def _num(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _setting(row: dict) -> tuple:
    return (row["batch_size"], row["seq_len"], row["threads"])


def _decision_rows(rows: list[dict], headline: str, max_drop: float) -> list[dict]:
    settings = list(dict.fromkeys(_setting(r) for r in rows))
    ok = [r for r in rows if r["status"] == "ok" and r.get("latency_ms")]
    out = []
    for row in rows:
        base = _baseline(ok, row)
        latency = row.get("latency_ms") or {}
        quality = {k: _num(v) for k, v in (row.get("quality") or {}).items()}
        value, base_value = quality.get(headline), ((base or {}).get("quality") or {}).get(headline)
        p50 = _num(latency.get("p50"))
        base_p50 = _num(((base or {}).get("latency_ms") or {}).get("p50"))
        entry = {
            "variant": row["variant"], "role": row.get("role"), "precision": row.get("precision"),
            "source": row.get("source"), "runtime": row.get("runtime"), "provider": row.get("provider"),
            "provider_used": row.get("provider_used"), "status": row["status"], "reason": row.get("reason"),
            "batch_size": row["batch_size"], "seq_len": row["seq_len"], "threads": row["threads"],
            "setting": "b{}/s{}/t{}".format(*_setting(row)), "size_mb": _num(row.get("size_mb")),
            "size_ratio": _ratio(row.get("size_mb"), (base or {}).get("size_mb")),
            "p50_ms": p50, "p90_ms": _num(latency.get("p90")), "p99_ms": _num(latency.get("p99")),
            "rounds_p50_ms": latency.get("rounds_p50") or [], "throughput": _num(row.get("throughput")),
            "peak_rss_mb": _num(row.get("peak_rss_mb")),
            "speedup": _ratio(base_p50, p50) if row["status"] == "ok" else None,
            "quality": quality, "headline": value,
            "quality_drop": (_num(base_value) - value) if _num(base_value) is not None and value is not None else None,
            "is_baseline": base is row,
        }
        entry["flags"] = _flags(row, entry, ok, max_drop)
        out.append(entry)
    # Settings in bench order; within one, fastest first; rows that did not run last.
    return sorted(out, key=lambda e: (settings.index((e["batch_size"], e["seq_len"], e["threads"])),
                                      e["p50_ms"] is None, e["p50_ms"] or 0.0, e["variant"], e["provider"] or ""))


def _baseline(ok: list[dict], row: dict) -> dict | None:
    """The teacher in torch fp32 at the row's setting; failing that, the teacher's fp32 ONNX on CPU."""
    same = [r for r in ok if _setting(r) == _setting(row) and r.get("role") == "teacher"
            and r.get("precision") == "fp32"]
    same.sort(key=lambda r: (r.get("runtime") != "torch", r.get("provider") != "CPUExecutionProvider"))
    return same[0] if same else None


def _ratio(a, b) -> float | None:
    a, b = _num(a), _num(b)
    return a / b if a is not None and b else None


def _flags(row: dict, entry: dict, ok: list[dict], max_drop: float) -> list[str]:
    if row["status"] != "ok":
        return [f"{row['status']}: {row.get('reason') or 'no reason given'}"]
    flags = []
    if entry["is_baseline"]:
        flags.append("baseline")
    quality = row.get("quality") or {}
    if entry["p50_ms"] is None or quality.get("nonfinite_outputs") or any(
            v is None or (isinstance(v, float) and math.isnan(v)) for v in quality.values()):
        flags.append("NaN")
    source = _source_row(ok, row)
    # Only beyond the noise: a few percent either way is what re-running the same variant gives here.
    if (source is not None and entry["p50_ms"] is not None
            and entry["p50_ms"] > source["latency_ms"]["p50"] * (1 + SLOWER_MARGIN)):
        flags.append(f"slower than its fp32 source ({source['variant']}, {source['latency_ms']['p50']:.2f} ms)")
    if entry["quality_drop"] is not None and entry["quality_drop"] > max_drop:
        flags.append(f"quality drop over {max_drop:g}")
    elif not quality:
        flags.append("quality not measured")
    rounds = [v for v in entry["rounds_p50_ms"] if _num(v)]
    if len(rounds) > 1:
        spread = (max(rounds) - min(rounds)) / sorted(rounds)[len(rounds) // 2]
        if spread > NOISY_SPREAD:
            flags.append(f"noisy: rounds differ by {spread:.0%}")
    return flags


def _source_row(ok: list[dict], row: dict) -> dict | None:
    """The fp32 ONNX a quantized variant came from, measured on the same provider and setting."""
    if row.get("precision") in (None, "fp32") or not row.get("source"):
        return None
    for other in ok:
        if (other["variant"] == row["source"] and other.get("provider") == row.get("provider")
                and _setting(other) == _setting(row) and other.get("runtime") == row.get("runtime")):
            return other
    return None


def _recommend(rows: list[dict], max_drop: float) -> dict | None:
    """The fastest row of the first setting whose quality drop stays within budget."""
    if not rows:
        return None
    first = rows[0]["setting"]
    fit = [r for r in rows if r["setting"] == first and r["status"] == "ok" and r["p50_ms"] is not None
           and r["quality_drop"] is not None and r["quality_drop"] <= max_drop and "NaN" not in r["flags"]]
    return min(fit, key=lambda r: r["p50_ms"]) if fit else None


def _where(row: dict) -> str:
    return f"{row['runtime']}/{_short(row['provider_used'] or row['provider'])}"


def _short(provider: str | None) -> str:
    return (provider or "-").removesuffix("ExecutionProvider")


def _recommendation_text(best: dict | None, rows: list[dict], headline: str, max_drop: float) -> str:
    if best is None:
        measured = [r for r in rows if r["quality_drop"] is not None and r["status"] == "ok"]
        closest = min(measured, key=lambda r: r["quality_drop"], default=None)
        tail = (f" The closest is {closest['variant']} ({_where(closest)}) with a drop of "
                f"{closest['quality_drop']:.4f}." if closest else " No quality was measured.")
        return f"Nothing qualifies: no variant keeps its {headline} drop within {max_drop:g}.{tail}"
    speed = f"{best['speedup']:.2f}x the speed of" if best["speedup"] else "no baseline to compare with"
    size = f", {best['size_mb']:.1f} MB" + (f" ({best['size_ratio']:.2f}x the size)" if best["size_ratio"] else "")
    return (f"Use {best['variant']} on {_where(best)}: {speed} the teacher in PyTorch fp32 "
            f"(p50 {best['p50_ms']:.2f} ms at {best['setting']}){size}, {headline} {best['headline']:.4f} "
            f"(drop {best['quality_drop']:.4f} <= {max_drop:g}).")


def _gates(gates: dict, best: dict | None) -> dict:
    checks = []
    for name, key, ok in (("max_quality_drop", "quality_drop", lambda v, t: v <= t),
                          ("min_speedup", "speedup", lambda v, t: v >= t)):
        threshold = gates.get(name)
        if threshold is None:
            continue
        value = best.get(key) if best else None
        checks.append({"gate": name, "threshold": threshold, "value": value,
                       "variant": best["variant"] if best else None,
                       "passed": value is not None and ok(value, threshold),
                       "detail": "nothing qualifies" if best is None else None})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def _distillation(manifest: dict, headline: str) -> dict | None:
    for name, stage in (manifest.get("stages") or {}).items():
        metrics = stage.get("metrics") or {}
        if stage.get("kind") == "distill" and all(k in metrics for k in DISTILL_KEYS):
            before, after = (_pick(metrics[k], headline) for k in ("quality_before", "quality_after"))
            return {"stage": name, "teacher_params": metrics["teacher_params"],
                    "student_params": metrics["student_params"],
                    "params_ratio": _ratio(metrics["student_params"], metrics["teacher_params"]),
                    "quality_before": before, "quality_after": after,
                    "gain": after - before if before is not None and after is not None else None,
                    "seconds": stage.get("seconds")}
    return None


def _pick(value, headline: str) -> float | None:
    return _num(value.get(headline)) if isinstance(value, dict) else _num(value)


# ---------------------------------------------------------------- rendering

SLOWER_MARGIN = 0.05
# The terminal table keeps what a decision needs; report.md has every column.
CONSOLE_COLUMNS = ("variant", "runtime/provider", "setting", "size MB", "p50 ms", "speed-up", "{headline}", "drop",
                   "flags")
COLUMNS = ("variant", "runtime/provider", "precision", "setting", "size MB", "size x", "p50 ms", "p90 ms",
           "speed-up", "{headline}", "other quality", "drop", "flags")


def _cells(row: dict, headline: str) -> list[str]:
    def f(value, spec=".2f", suffix=""):
        return "-" if value is None else f"{value:{spec}}{suffix}"

    others = ", ".join(f"{k} {v:.3f}" for k, v in row["quality"].items() if k != headline and v is not None)
    return [row["variant"], _where(row) if row["status"] == "ok" else f"{row['runtime']}/{_short(row['provider'])}",
            row["precision"] or "-", row["setting"], f(row["size_mb"], ".1f"), f(row["size_ratio"], ".2f", "x"),
            f(row["p50_ms"]), f(row["p90_ms"]), f(row["speedup"], ".2f", "x"), f(row["headline"], ".4f"),
            others or "-", f(row["quality_drop"], ".4f"), "; ".join(row["flags"])]


def decision_table(report: dict):
    """The decision table as a rich Table (one row per variant x provider x setting)."""
    from rich.table import Table

    headline = report.get("headline", "cosine")
    table = Table(title=f"compress: {report.get('run') or 'run'}", caption=report.get("recommendation_text"),
                  caption_justify="left")
    keep = [COLUMNS.index(name) for name in CONSOLE_COLUMNS]
    for name in CONSOLE_COLUMNS:
        numeric = name in ("size MB", "size x", "p50 ms", "p90 ms", "speed-up", "drop", "{headline}")
        table.add_column(name.format(headline=headline), justify="right" if numeric else "left",
                         overflow="fold", no_wrap=name == "variant")
    best = report.get("recommendation")
    for row in report.get("rows", []):
        chosen = best is not None and all(row[k] == best[k] for k in ("variant", "provider", "setting"))
        style = "bold green" if chosen else ("dim" if row["status"] != "ok" else None)
        cells = _cells(row, headline)
        table.add_row(*(cells[i] for i in keep), style=style)
    return table


def render_markdown(report: dict) -> str:
    headline = report.get("headline", "cosine")
    env = report.get("environment") or {}
    cpu = env.get("cpu") or {}
    lines = [f"# compress report: {report.get('run') or 'run'}", "",
             f"**Recommendation.** {report['recommendation_text']}", ""]
    gates = report["gates"]
    if gates["checks"]:
        lines += [f"**Gates: {'passed' if gates['passed'] else 'FAILED'}.**", ""]
        lines += [f"- {c['gate']}: {c['value'] if c['value'] is None else round(c['value'], 4)} vs "
                  f"{c['threshold']} ({'pass' if c['passed'] else 'fail'}{', ' + c['detail'] if c['detail'] else ''})"
                  for c in gates["checks"]] + [""]
    else:
        lines += ["**Gates:** none set in the recipe.", ""]
    lines += [_trust_line(report.get("trust")), ""]
    header = [c.format(headline=headline) for c in COLUMNS]
    lines += ["## Decision table", "", (f"Speed-up and quality drop are against {report['baseline']}; quality "
              f"({headline}) is measured on held-out texts against the teacher's PyTorch fp32 outputs."), "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r, headline)) + " |" for r in report["rows"]]
    dist = report.get("distillation")
    if dist:
        lines += ["", "## Distillation", "",
                  (f"- student: {dist['student_params']:,} parameters, {dist['params_ratio']:.2f}x the teacher's "
                  f"{dist['teacher_params']:,}"),
                  (f"- {headline} vs the teacher before training: {_fmt(dist['quality_before'])}, after: "
                  f"{_fmt(dist['quality_after'])} (gain {_fmt(dist['gain'], '+.4f')})")]
    settings = report.get("settings") or {}
    lines += ["", "## Environment", "",
              (f"- CPU: {cpu.get('model', '?')} ({cpu.get('arch', env.get('machine', '?'))}, "
              f"{cpu.get('cores', env.get('cpu_count', '?'))} cores); OS: {env.get('os', '?')}; "
              f"Python {env.get('python', '?')}"),
              "- " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v),
              (f"- method: {settings.get('rounds', '?')} interleaved rounds, each >= "
              f"{settings.get('min_iterations', '?')} runs and >= {settings.get('min_seconds', '?')} s after "
              f"{settings.get('warmup', '?')} warm-up runs; quality on {settings.get('eval_size', '?')} texts"), ""]
    return "\n".join(lines)


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
