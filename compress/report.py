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
    from compress.rundir import disk_errors
    from compress.rundir import lock as _lock

    run_dir = Path(run_dir)
    if manifest.get("sweep"):
        from compress import sweep

        return sweep.write_reports(run_dir, manifest)
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
    gates, select = recipe.get("gates") or {}, recipe.get("select") or {}
    max_drop = next((v for v in (select.get("max_quality_drop"), gates.get("max_quality_drop")) if v is not None),
                    DEFAULT_MAX_DROP)
    prices = {name: (t or {}).get("price_per_hour") for name, t in (recipe.get("targets") or {}).items()}
    rows = _decision_rows([row for doc in docs for row in doc["rows"]], headline, max_drop, prices)
    best, why = recommend(rows, select, max_drop)
    return {
        "run": recipe.get("name"), "task": recipe.get("task"), "headline": headline,
        "baseline": BASELINES.get(recipe.get("task"), BASELINES[None]),
        "quality_basis": QUALITY_BASIS.get(recipe.get("task"), QUALITY_BASIS[None]),
        "max_quality_drop": max_drop,
        "select": {**select, "max_quality_drop": max_drop},
        "environment": docs[0]["environment"] if docs else {},
        "targets": {name: env for doc in docs for name, env in (doc.get("targets") or {}).items()},
        "settings": docs[0]["settings"] if docs else {},
        "rows": rows,
        "recommendation": best,
        "recommendation_text": _recommendation_text(best, why, headline),
        "gates": _gates(gates, best),
        "distillation": _distillation(manifest, headline),
        "accuracy": accuracy_searches(manifest),
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
    """Everything that makes two measurements of one variant different: batch, sequence, session, machine."""
    return (row["batch_size"], row["seq_len"], row["threads"], row.get("inter_op_threads") or 1,
            row.get("graph_optimization") or "all", row.get("execution_mode") or "sequential",
            row.get("target") or "local")


def setting_label(row: dict) -> str:
    """`b1/s128/t1`, plus `/i2`, `/opt-basic`, `/parallel` and `@target` where they differ from the defaults."""
    batch, seq, threads, inter, opt, mode, target = _setting(row)
    parts = [f"b{batch}/s{seq}/t{threads}", f"i{inter}" if inter != 1 else "", f"opt-{opt}" if opt != "all" else "",
             mode if mode != "sequential" else ""]
    return "/".join(p for p in parts if p) + (f"@{target}" if target != "local" else "")


BASELINES = {
    None: "teacher in PyTorch fp32 at the same batch size, sequence length and threads",
    "causal-lm": "the teacher's fp32 ONNX export at the same batch size, prompt length (s) and threads; p50/p90 "
                 "are milliseconds per generated token (greedy decoding through the key/value cache)",
}
QUALITY_BASIS = {
    None: "held-out texts against the teacher's PyTorch fp32 outputs",
    "causal-lm": "held-out teacher-style text: agreement is the share of next tokens where the variant's greedy "
                 "choice is the fp32 teacher's; perplexity (lower is better) is under the variant itself",
}


def _decision_rows(rows: list[dict], headline: str, max_drop: float, prices: dict | None = None) -> list[dict]:
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
            "inter_op_threads": row.get("inter_op_threads"), "graph_optimization": row.get("graph_optimization"),
            "execution_mode": row.get("execution_mode"), "provider_request": row.get("provider_request"),
            "setting": setting_label(row), "size_mb": _num(row.get("size_mb")),
            "size_ratio": _ratio(row.get("size_mb"), (base or {}).get("size_mb")),
            "p50_ms": p50, "p90_ms": _num(latency.get("p90")), "p99_ms": _num(latency.get("p99")),
            "rounds_p50_ms": latency.get("rounds_p50") or [], "throughput": _num(row.get("throughput")),
            "ttft_ms": _num((row.get("ttft_ms") or {}).get("p50")), "tokens_per_s": _num(row.get("tokens_per_s")),
            "peak_rss_mb": _num(row.get("peak_rss_mb")),
            # Emulated timings say nothing about speed: no speed-up is computed from them.
            "speedup": _ratio(base_p50, p50) if row["status"] == "ok" and not row.get("emulated") else None,
            "quality": quality, "headline": value,
            "quality_drop": (_num(base_value) - value) if _num(base_value) is not None and value is not None else None,
            "is_baseline": base is row,
            "target": row.get("target") or "local", "emulated": bool(row.get("emulated")),
        }
        entry["cost_per_million"] = _cost(row, prices or {})
        base_cost = _cost(base, prices or {}) if base else None
        entry["cost_saving"] = (1 - entry["cost_per_million"] / base_cost
                                if entry["cost_per_million"] is not None and base_cost else None)
        entry["flags"] = _flags(row, entry, ok, max_drop)
        out.append(entry)
    # Settings in bench order; within one, fastest first; rows that did not run last.
    return sorted(out, key=lambda e: (settings.index(_setting(e)),
                                      e["p50_ms"] is None, e["p50_ms"] or 0.0, e["variant"], e["provider"] or ""))


def _cost(row: dict, prices: dict) -> float | None:
    """Dollars per million inferences (one text each) at the row's p50, on a machine billed by the hour."""
    price = prices.get(row.get("target") or "local")
    p50 = _num((row.get("latency_ms") or {}).get("p50"))
    if price is None or p50 is None or row.get("status") != "ok":
        return None
    seconds_per_inference = p50 / 1000 / row["batch_size"]
    return price / 3600 * seconds_per_inference * 1e6


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
    if row["status"] == "unavailable" and row.get("provider_request"):
        return [f"{row['provider_request']}: unavailable ({row.get('reason') or 'no reason given'})"]
    if row["status"] != "ok":
        return [f"{row['status']}: {row.get('reason') or 'no reason given'}"]
    flags = ["emulated: timings not comparable"] if row.get("emulated") else []
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


OBJECTIVES = {"p50": "p50_ms", "p90": "p90_ms", "p99": "p99_ms", "size": "size_mb", "cost": "cost_per_million"}
TIE_MARGIN = 0.03  # objective values closer than this (relative) are a tie: within the noise of re-measuring


def recommend(rows: list[dict], select: dict, max_drop: float) -> tuple[dict | None, dict]:
    """The row that meets every constraint of `select` with the lowest objective, and why (for the text)."""
    objective = select.get("objective") or "p50"
    key = OBJECTIVES[objective]
    setting = select.get("setting") or (rows[0]["setting"].split("@")[0] if rows else None)
    why = {"objective": objective, "setting": setting, "max_drop": max_drop, "excluded": {}, "ties": [],
           "provider": select.get("provider"), "target": select.get("target"), "considered": 0}
    tests = [  # (reason a row is excluded, test it must pass), checked in this order
        ("did not run", lambda r: r["status"] == "ok" and r["p50_ms"] is not None),
        ("other setting", lambda r: r["setting"].split("@")[0] == setting),
        ("other provider", lambda r: not select.get("provider") or _provider_matches(r, select["provider"])),
        ("other target", lambda r: not select.get("target") or r.get("target", "local") == select["target"]),
        ("emulated timing", lambda r: not r.get("emulated")),
        ("NaN outputs", lambda r: "NaN" not in r.get("flags", [])),
        ("quality not measured", lambda r: r["quality_drop"] is not None),
        (f"quality drop over {max_drop:g}", lambda r: r["quality_drop"] <= max_drop),
        (f"larger than {select.get('max_size_mb')} MB",
         lambda r: not select.get("max_size_mb") or (r["size_mb"] or 0) <= select["max_size_mb"]),
        (f"no {objective}", lambda r: r.get(key) is not None),
    ]
    fit = []
    for row in rows:
        failed = next((reason for reason, test in tests if not test(row)), None)
        if failed is None:
            fit.append(row)
        elif failed not in ("other setting", "did not run"):
            why["excluded"][failed] = why["excluded"].get(failed, 0) + 1
    why["considered"] = len(fit)
    if not fit:
        why["closest"] = min((r for r in rows if r["quality_drop"] is not None and r["status"] == "ok"
                              and r["setting"].split("@")[0] == setting), key=lambda r: r["quality_drop"],
                             default=None)
        return None, why
    low = min(r[key] for r in fit)
    tied = [r for r in fit if r[key] <= low * (1 + TIE_MARGIN)]
    # A tie within the noise goes to the better quality, then the smaller file.
    tied.sort(key=lambda r: (-(r["headline"] or 0.0), r["size_mb"] or 0.0, r[key]))
    why["ties"] = [r["variant"] for r in tied[1:]]
    return tied[0], why


def _provider_matches(row: dict, wanted: str) -> bool:
    names = {n for n in (row.get("provider"), row.get("provider_used")) if n}
    return wanted in names or wanted.lower() in {_short(n).lower() for n in names}


def _where(row: dict) -> str:
    if (row.get("provider_request") or "").lower() == "arm":
        return f"{row['runtime']}/arm"
    return f"{row['runtime']}/{_short(row['provider_used'] or row['provider'])}"


def _short(provider: str | None) -> str:
    return (provider or "-").removesuffix("ExecutionProvider")


def _recommendation_text(best: dict | None, why: dict, headline: str) -> str:
    scope = " on ".join(filter(None, [why["setting"], why.get("provider"), why.get("target")]))
    excluded = "; ".join(f"{n} {reason}" for reason, n in why["excluded"].items())
    if best is None:
        closest = why.get("closest")
        tail = (f" The closest is {closest['variant']} ({_where(closest)}) with a drop of "
                f"{closest['quality_drop']:.4f}." if closest else " No quality was measured.")
        return (f"Nothing qualifies at {scope}: no variant meets every constraint ({headline} drop within "
                f"{why['max_drop']:g}{', excluded: ' + excluded if excluded else ''}).{tail}")
    speed = f"{best['speedup']:.2f}x the speed of" if best["speedup"] else "no baseline to compare with"
    size = f", {best['size_mb']:.1f} MB" + (f" ({best['size_ratio']:.2f}x the size)" if best["size_ratio"] else "")
    against = "the teacher's fp32 ONNX" if best.get("tokens_per_s") is not None else "the teacher in PyTorch fp32"
    per = (f"{best['tokens_per_s']:.1f} tokens/s, time to first token {best['ttft_ms']:.1f} ms"
           if best.get("tokens_per_s") is not None else f"p50 {best['p50_ms']:.2f} ms")
    text = (f"Use {best['variant']} on {_where(best)}: {speed} {against} "
            f"({per} at {best['setting']}){size}, {headline} {best['headline']:.4f} "
            f"(drop {best['quality_drop']:.4f} <= {why['max_drop']:g}).")
    if best.get("cost_per_million") is not None:
        saving = (f", {best['cost_saving']:.0%} less than the teacher" if best.get("cost_saving") is not None
                  else "")
        text += f" ${best['cost_per_million']:.4f} per million inferences{saving}."
    text += (f" Why: lowest {why['objective']} of {why['considered']} qualifying row(s) at {scope}"
             f"{' (excluded: ' + excluded + ')' if excluded else ''}.")
    if why["ties"]:
        text += (f" Tie within {TIE_MARGIN:.0%} on {why['objective']} with {', '.join(why['ties'])}: "
                 f"picked for higher {headline}, then smaller size.")
    return text


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


def accuracy_searches(manifest: dict) -> dict:
    """The quantize stages' accuracy searches, by artifact: budget, steps, nodes kept in higher precision."""
    found = {}
    for stage in (manifest.get("stages") or {}).values():
        if stage.get("kind") != "quantize":
            continue
        for name, metrics in (stage.get("metrics") or {}).items():
            if isinstance(metrics, dict) and isinstance(metrics.get("accuracy"), dict):
                found[name] = metrics["accuracy"]
    return found


def accuracy_lines(searches: dict, headline: str) -> list[str]:
    """Per searched artifact: what it reached, which nodes stayed in higher precision, what each step bought."""
    lines = []
    for name, acc in searches.items():
        kept = acc.get("excluded_nodes") or []
        verdict = "within budget" if acc.get("within_budget") else "NOT within budget"
        lines += [f"### {name}", "",
                  f"- budget: {headline} drop <= {acc.get('max_quality_drop')} vs the fp32 source "
                  f"({_fmt(acc.get('source_quality'))}), {acc.get('time_budget_s'):g} s; reached: drop "
                  f"{_fmt(acc.get('drop'))}, {verdict} ({acc.get('reason')}) in {acc.get('seconds')} s",
                  f"- kept in {acc.get('kept_precision')}: " + (", ".join(f"`{n}`" for n in kept) if kept else "none"),
                  "", f"| step | excluded groups | nodes kept | {headline} | drop | {headline} gained | p50 ms | "
                  "p50 change |", "|---|---|---|---|---|---|---|---|"]
        steps = acc.get("steps") or []
        for step, before in zip(steps, [None, *steps[:-1]]):
            gained = (step["quality"] - before["quality"] if before and step.get("quality") is not None
                      and before.get("quality") is not None else None)
            change = step["latency_ms"] - before["latency_ms"] if before else None
            best = " (kept)" if step["step"] == acc.get("best_step") else ""
            lines.append(f"| {step['step']}{best} | {', '.join(step['excluded_groups']) or '-'} | "
                         f"{step['excluded_nodes']} | {_fmt(step.get('quality'))} | {_fmt(step.get('drop'))} | "
                         f"{_fmt(gained, '+.4f')} | {step['latency_ms']:.2f} | {_fmt(change, '+.2f')} |")
        lines.append("")
    return lines


def _pick(value, headline: str) -> float | None:
    return _num(value.get(headline)) if isinstance(value, dict) else _num(value)


# ---------------------------------------------------------------- rendering

SLOWER_MARGIN = 0.05
# The terminal table keeps what a decision needs; report.md has every column.
CONSOLE_COLUMNS = ("variant", "runtime/provider", "setting", "size MB", "p50 ms", "speed-up", "{headline}", "drop",
                   "flags")
COLUMNS = ("variant", "runtime/provider", "precision", "setting", "size MB", "size x", "p50 ms", "p90 ms",
           "TTFT ms", "tokens/s", "speed-up", "$ / M inf.", "{headline}", "other quality", "drop", "flags")


def _cells(row: dict, headline: str) -> list[str]:
    def f(value, spec=".2f", suffix=""):
        return "-" if value is None else f"{value:{spec}}{suffix}"

    others = ", ".join(f"{k} {v:.3f}" for k, v in row["quality"].items() if k != headline and v is not None)
    return [row["variant"], _where(row) if row["status"] == "ok" else f"{row['runtime']}/{_short(row['provider'])}",
            row["precision"] or "-", row["setting"], f(row["size_mb"], ".1f"), f(row["size_ratio"], ".2f", "x"),
            f(row["p50_ms"]), f(row["p90_ms"]), f(row.get("ttft_ms")), f(row.get("tokens_per_s"), ".1f"),
            f(row["speedup"], ".2f", "x"), _cost_cell(row), f(row["headline"], ".4f"),
            others or "-", f(row["quality_drop"], ".4f"), "; ".join(row["flags"])]


def _cost_cell(row: dict) -> str:
    cost, saving = row.get("cost_per_million"), row.get("cost_saving")
    if cost is None:
        return "-"
    return f"${cost:.4f}" + (f" ({-saving:+.0%})" if saving else "")


def decision_table(report: dict):
    """The decision table as a rich Table (one row per variant x provider x setting)."""
    from rich.table import Table

    headline = report.get("headline", "cosine")
    table = Table(title=f"compress: {report.get('run') or 'run'}", caption=report.get("recommendation_text"),
                  caption_justify="left")
    shown = CONSOLE_COLUMNS
    if any(r.get("cost_per_million") is not None for r in report.get("rows", [])):
        shown = (*CONSOLE_COLUMNS[:-3], "$ / M inf.", *CONSOLE_COLUMNS[-3:])
    if _generation(report):
        shown = (*shown[:5], "TTFT ms", "tokens/s", *shown[5:])
    keep = [COLUMNS.index(name) for name in shown]
    for name in shown:
        numeric = name in ("size MB", "size x", "p50 ms", "p90 ms", "speed-up", "$ / M inf.", "drop", "{headline}")
        table.add_column(name.format(headline=headline), justify="right" if numeric else "left",
                         overflow="fold", no_wrap=name == "variant")
    best = report.get("recommendation")
    for row in report.get("rows", []):
        chosen = best is not None and all(row[k] == best[k] for k in ("variant", "provider", "setting"))
        style = "bold green" if chosen else ("dim" if row["status"] != "ok" else None)
        cells = _cells(row, headline)
        table.add_row(*(cells[i] for i in keep), style=style)
    return table


def _generation(report: dict) -> bool:
    """Rows of a causal LM's generation bench (time to first token, tokens per second)."""
    return any(r.get("tokens_per_s") is not None for r in report.get("rows", []))


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
    keep = [i for i, c in enumerate(COLUMNS) if _generation(report) or c not in ("TTFT ms", "tokens/s")]
    header = [COLUMNS[i].format(headline=headline) for i in keep]
    basis = report.get("quality_basis") or QUALITY_BASIS[None]
    lines += ["## Decision table", "", (f"Speed-up and quality drop are against {report['baseline']}; quality "
              f"({headline}) is measured on {basis}."), "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r, headline)[i].replace("|", "/") for i in keep) + " |"
              for r in report["rows"]]
    dist = report.get("distillation")
    if dist:
        lines += ["", "## Distillation", "",
                  (f"- student: {dist['student_params']:,} parameters, {dist['params_ratio']:.2f}x the teacher's "
                  f"{dist['teacher_params']:,}"),
                  (f"- {headline} vs the teacher before training: {_fmt(dist['quality_before'])}, after: "
                  f"{_fmt(dist['quality_after'])} (gain {_fmt(dist['gain'], '+.4f')})")]
    if report.get("accuracy"):
        lines += ["", "## Accuracy search", "", "Each step keeps one more group of the most sensitive nodes "
                  "(ranked by the drop each causes alone) in higher precision; p50 is a quick timing at batch 1, "
                  "1 thread.", "", *accuracy_lines(report["accuracy"], headline)]
    settings = report.get("settings") or {}
    lines += ["", "## Environment", "",
              (f"- CPU: {cpu.get('model', '?')} ({cpu.get('arch', env.get('machine', '?'))}, "
              f"{cpu.get('cores', env.get('cpu_count', '?'))} cores); OS: {env.get('os', '?')}; "
              f"Python {env.get('python', '?')}"),
              "- " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v),
              *_target_lines(report.get("targets") or {}),
              (f"- method: {settings.get('rounds', '?')} interleaved rounds, each >= "
              f"{settings.get('min_iterations', '?')} runs and >= {settings.get('min_seconds', '?')} s after "
              f"{settings.get('warmup', '?')} warm-up runs; quality on {settings.get('eval_size', '?')} texts"), ""]
    return "\n".join(lines)


def _target_lines(targets: dict) -> list[str]:
    """One line per machine benched on: what it is and what onnxruntime could use there."""
    lines = []
    for name, env in targets.items():
        flags = ", ".join(k for k, v in (env.get("cpu_flags") or {}).items() if v) or "none detected"
        lines.append(f"- target {name}{' (EMULATED: correctness only, timings not comparable)' if env.get('emulated') else ''}: "
                     f"{env.get('cpu_model', '?')} ({env.get('machine', '?')}, {env.get('cores', '?')} cores, "
                     f"{env.get('memory_gb', '?')} GB), {env.get('os', '?')}; {env.get('onnxruntime_package', 'onnxruntime')} "
                     f"{env.get('onnxruntime', '?')} with {', '.join(env.get('available_providers') or []) or '?'}; "
                     f"CPU flags: {flags}")
    return lines


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
