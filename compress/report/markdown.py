"""report.md, the recommendation's sentence and the terminal's decision table (rich)."""

from __future__ import annotations

from compress.report.decision import (
    QUALITY_BASIS,
    TIE_MARGIN,
    drop_text,
    is_recommended,
    placement_notes,
    real_lengths_note,
    where,
)
from compress.tasks.intervals import interval_text

# The terminal table keeps what a decision needs; report.md has every column.
CONSOLE_COLUMNS = ("variant", "runtime/provider", "setting", "size MB", "p50 ms", "speed-up", "{headline}", "drop",
                   "flags")
COLUMNS = ("variant", "runtime/provider", "precision", "setting", "size MB", "size x", "p50 ms", "p90 ms",
           "TTFT ms", "tokens/s", "speed-up", "$ / M inf.", "{headline}", "other quality", "drop", "flags")


def fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def table_cells(row: dict, headline: str) -> list[str]:
    """One decision row as text, one cell per entry of COLUMNS (markdown, terminal and the gate pick from it)."""
    cis = row.get("quality_ci") or {}  # each figure with its 95% interval where per-item scores gave one
    others = ", ".join(f"{k} {interval_text(v, cis.get(k), '.3f')}" for k, v in row["quality"].items()
                       if k != headline and v is not None)
    return [row["variant"], where(row), row["precision"] or "-", row["setting"], fmt(row["size_mb"], ".1f"),
            fmt(row["size_ratio"], ".2f") + ("x" if row["size_ratio"] is not None else ""),
            fmt(row["p50_ms"], ".2f"), fmt(row["p90_ms"], ".2f"), fmt(row.get("ttft_ms"), ".2f"),
            fmt(row.get("tokens_per_s"), ".1f"),
            fmt(row["speedup"], ".2f") + ("x" if row["speedup"] is not None else ""), _cost_cell(row),
            fmt(row["headline"], ".4f"), others or "-", drop_text(row), "; ".join(row["flags"])]


def _cost_cell(row: dict) -> str:
    cost, saving = row.get("cost_per_million"), row.get("cost_saving")
    if cost is None:
        return "-"
    return f"${cost:.4f}" + (f" ({-saving:+.0%})" if saving else "")


def is_generation(report: dict) -> bool:
    """Rows of a causal LM's generation bench (time to first token, tokens per second)."""
    return any(r.get("tokens_per_s") is not None for r in report.get("rows", []))


def decision_table(report: dict):
    """The decision table as a rich Table (one row per variant x provider x setting)."""
    from rich.table import Table

    headline = report.get("headline", "cosine")
    caption = report.get("recommendation_text") or ""
    if report.get("headline_reason"):
        caption += f"\nThe headline is {headline}: {report['headline_reason']}."
    table = Table(title=f"compress: {report.get('run') or 'run'}", caption=caption or None, caption_justify="left")
    shown = CONSOLE_COLUMNS
    if any(r.get("cost_per_million") is not None for r in report.get("rows", [])):
        shown = (*CONSOLE_COLUMNS[:-3], "$ / M inf.", *CONSOLE_COLUMNS[-3:])
    if is_generation(report):
        shown = (*shown[:5], "TTFT ms", "tokens/s", *shown[5:])
    keep = [COLUMNS.index(name) for name in shown]
    for name in shown:
        numeric = name in ("size MB", "size x", "p50 ms", "p90 ms", "speed-up", "$ / M inf.", "drop", "{headline}")
        table.add_column(name.format(headline=headline), justify="right" if numeric else "left",
                         overflow="fold", no_wrap=name == "variant")
    best = report.get("recommendation")
    for row in report.get("rows", []):
        style = "bold green" if is_recommended(row, best) else ("dim" if row["status"] != "ok" else None)
        cells = table_cells(row, headline)
        table.add_row(*(cells[i] for i in keep), style=style)
    return table


def recommendation_text(best: dict | None, why: dict, headline: str) -> str:
    """The recommendation in one paragraph: what, how fast and good, why it and not the others."""
    scope = " on ".join(filter(None, [why["setting"], why.get("provider"), why.get("target")]))
    excluded = "; ".join(f"{n} {reason}" for reason, n in why["excluded"].items())
    if best is None:
        closest = why.get("closest")
        tail = (f" The closest is {closest['variant']} ({where(closest)}) with a drop of "
                f"{drop_text(closest)}." if closest else " No quality was measured.")
        return (f"Nothing qualifies at {scope}: no variant meets every constraint ({headline} drop within "
                f"{why['max_drop']:g}{', excluded: ' + excluded if excluded else ''}).{tail}")
    spread = best.get("speedup_ci")
    speed = (f"{best['speedup']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f}x over rounds)" if spread else "")
             + " the speed of") if best["speedup"] else "no baseline to compare with"
    size = f", {best['size_mb']:.1f} MB" + (f" ({best['size_ratio']:.2f}x the size)" if best["size_ratio"] else "")
    against = "the teacher's fp32 ONNX" if best.get("tokens_per_s") is not None else "the teacher in PyTorch fp32"
    per = (f"{best['tokens_per_s']:.1f} tokens/s, time to first token {best['ttft_ms']:.1f} ms"
           if best.get("tokens_per_s") is not None else f"p50 {best['p50_ms']:.2f} ms")
    text = (f"Use {best['variant']} on {where(best)}: {speed} {against} "
            f"({per} at {best['setting']}){size}, {headline} {best['headline']:.4f} "
            + (f"(drop {drop_text(best)}, 95% interval within {why['max_drop']:g})." if best.get("drop_ci")
               else f"(drop {best['quality_drop']:.4f} <= {why['max_drop']:g})."))
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


# ---------------------------------------------------------------- report.md


def render_markdown(report: dict) -> str:
    headline = report.get("headline", "cosine")
    lines = [f"# compress report: {report.get('run') or 'run'}", "",
             f"**Recommendation.** {report['recommendation_text']}", ""]
    lines += _gate_lines(report["gates"])
    lines += [trust_line(report.get("trust")), ""]
    lines += _table_lines(report, headline)
    lines += frontier_lines(report)
    lines += runtime_lines(report.get("runtimes") or {})
    lines += _distillation_lines(report.get("distillation"), headline)
    if report.get("accuracy"):
        lines += ["", "## Accuracy search", "", "Each step keeps one more group of the most sensitive nodes "
                  "(ranked by the drop each causes alone) in higher precision; p50 is a quick timing at batch 1, "
                  "1 thread.", "", *accuracy_lines(report["accuracy"], headline)]
    lines += int8_choice_lines(report.get("int8_choices") or {})
    lines += _environment_lines(report)
    return "\n".join(lines)


def int8_choice_lines(choices: dict) -> list[str]:
    """int8-static of a CNN: the cross-layer equalization done and every calibration choice tried."""
    if not choices:
        return []
    lines = ["", "## int8-static calibration (convolutional model)", ""]
    for name, cnn in choices.items():
        eq = cnn.get("equalization")
        done = ("off" if not isinstance(eq, dict) else f"{eq.get('pairs')} convolution pairs, widest per-channel "
                f"weight-range ratio {eq.get('weight_range_spread_before')} -> {eq.get('weight_range_spread_after')}")
        chosen = cnn.get("chosen") or {}
        lines += [f"### {name}", "", f"- cross-layer equalization: {done}",
                  f"- kept: {chosen.get('calibration', 'as configured')}, "
                  f"{'per-channel' if chosen.get('per_channel', True) else 'per-tensor'} weights "
                  f"(top-1 agreement with fp32 {fmt(chosen.get('agreement'))} on {cnn.get('scored_on')} training "
                  "images, not the held-out ones)", ""]
        if cnn.get("tried"):
            lines += ["| calibration | weights | agreement |", "|---|---|---|"]
            lines += [f"| {r['calibration']} | {'per-channel' if r['per_channel'] else 'per-tensor'} | "
                      f"{fmt(r['agreement'])} |" for r in cnn["tried"]]
            lines.append("")
        lines += _mixed_lines(cnn.get("mixed"))
    return lines


def _mixed_lines(mixed) -> list[str]:
    """The mixed-precision search (compress/quant_mixed.py): what it kept in float and why."""
    if not isinstance(mixed, dict):
        return []
    kept = mixed.get("kept_float") or []
    lines = [f"- kept in float (mixed precision): {len(kept)} ({mixed.get('reason')}; int8 alone "
             f"{fmt(mixed.get('int8_agreement'))} on {mixed.get('images')} training images)"]
    return lines + [f"  - {name}" for name in kept] + [""]


def _gate_lines(gates: dict) -> list[str]:
    if not gates["checks"]:
        return ["**Gates:** none set in the recipe.", ""]
    return [f"**Gates: {'passed' if gates['passed'] else 'FAILED'}.**", "",
            *(f"- {c['gate']}: {c['value'] if c['value'] is None else round(c['value'], 4)}"
              f"{gate_interval(c)} vs {c['threshold']} "
              f"({'pass' if c['passed'] else 'fail'}{', ' + c['detail'] if c['detail'] else ''})"
              for c in gates["checks"]), ""]


def gate_interval(check: dict) -> str:
    """` [-0.0090, 0.0150] (upper bound judged)` after a gate's value, where the gate has an interval."""
    low_high = check.get("interval")
    if not low_high:
        return ""
    judged = " (upper bound judged)" if check["gate"] == "max_quality_drop" else " over rounds"
    return f" [{low_high[0]:.4f}, {low_high[1]:.4f}]{judged}"


def metric_line(report: dict) -> str:
    """Which quality metric the recommendation judges and where that choice comes from ("" for older reports)."""
    metric = report.get("quality_metric")
    if not metric:
        return ""
    source = ("the task's default" if metric["chosen_by"] != "select.quality"
              else f"select.quality; the task's default is {metric['default']}")
    return (f"Quality judged: {metric['judged']} ({source}; `select: {{quality: ...}}` names another). A drop is shown with its 95% interval (paired bootstrap over "
            "the held-out items, 1,000 resamples) where per-item scores were measured; a variant qualifies when "
            "the interval's upper bound is within the budget.")


def frontier_lines(report: dict) -> list[str]:
    """The frontier: per speed-up band, the best variant by the judged quality metric."""
    bands = report.get("frontier") or []
    if not bands:
        return []
    headline = report.get("headline", "cosine")
    lines = ["", "## Frontier", "", f"Per speed-up band, the variant with the best {headline} (at the "
             "recommendation's setting): what each factor of speed costs.", ""]
    for band in bands:
        spread = band.get("speedup_ci")
        speed = f"{band['speedup']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f}x over rounds)" if spread else "")
        lines.append(f"- {band['band']}: {band['variant']} on {band['where']} ({band['setting']}), {speed}, "
                     f"{headline} {interval_text(band['headline'], band.get('headline_ci'))}, drop {drop_text(band)}")
    return lines


def _table_lines(report: dict, headline: str) -> list[str]:
    keep = [i for i, c in enumerate(COLUMNS) if is_generation(report) or c not in ("TTFT ms", "tokens/s")]
    header = [COLUMNS[i].format(headline=headline) for i in keep]
    basis = report.get("quality_basis") or QUALITY_BASIS[None]
    reason = report.get("headline_reason")
    why = f" The headline is {headline}: {reason}." if reason else ""
    lines = ["## Decision table", "", (f"Speed-up and quality drop are against {report['baseline']}; quality "
             f"({headline}) is measured on {basis}.{why}"), ""]
    lines += [metric_line(report), ""] if metric_line(report) else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(table_cells(r, headline)[i].replace("|", "/") for i in keep) + " |"
                    for r in report["rows"]]


def runtime_lines(runtimes: dict) -> list[str]:
    """Which quantized variants load outside onnxruntime (from their operators), and size surprises explained."""
    if not runtimes:
        return []
    groups = {"onnxruntime only": [], "onnxruntime and OpenVINO": [], "any ONNX runtime (standard operators)": []}
    for name, info in runtimes.items():
        if info.get("onnxruntime_only"):
            groups["onnxruntime only"].append(f"{name} ({', '.join(info['onnxruntime_only'])})")
        else:
            groups["any ONNX runtime (standard operators)" if info.get("standard_onnx")
                   else "onnxruntime and OpenVINO"].append(name)
    lines = ["", "## Where the variants run", "",
             "From each quantized model's operators (compress.json `runtimes`); fp32 bundles are not listed.", ""]
    lines += [f"- {group}: {', '.join(names)}" for group, names in groups.items() if names]
    for name, info in runtimes.items():
        larger = info.get("larger_than_int8_dynamic")
        if larger:
            lines.append(f"- {name} is larger than int8-dynamic ({larger['size_bytes'] / 1e6:.1f} vs "
                         f"{larger['int8_dynamic_bytes'] / 1e6:.1f} MB): {larger['why']}")
        if info.get("settings"):
            lines.append(f"- {name} was quantized with: {info['settings']}")
        form = info.get("int8_form")
        if form:
            lines.append(f"- {name} is in the {form['form']} int8 form: {form['why']}")
    return lines


def _distillation_lines(dist: dict | None, headline: str) -> list[str]:
    if not dist:
        return []
    return ["", "## Distillation", "",
            (f"- student: {dist['student_params']:,} parameters, {dist['params_ratio']:.2f}x the teacher's "
             f"{dist['teacher_params']:,}"),
            (f"- {headline} vs the teacher before training: {fmt(dist['quality_before'])}, after: "
             f"{fmt(dist['quality_after'])} (gain {fmt(dist['gain'], '+.4f')})"),
            *([f"- training: {dist['steps']:,} steps in {dist['train_seconds']:.0f} s, {dist['samples_per_s']:.0f} "
               f"samples/s, precision {dist.get('precision') or 'fp32'}"] if "steps" in dist else []),
            *([f"- embedding space: projection {dist['projection']}; index-compatible with the teacher: "
               f"{'yes' if dist['index_compatible'] else 'no'} ({dist.get('index_note') or '-'})"]
              if "index_compatible" in dist else [])]


def _environment_lines(report: dict) -> list[str]:
    env, settings = report.get("environment") or {}, report.get("settings") or {}
    cpu = env.get("cpu") or {}
    return ["", "## Environment", "",
            (f"- CPU: {cpu.get('model', '?')} ({cpu.get('arch', env.get('machine', '?'))}, "
             f"{cpu.get('cores', env.get('cpu_count', '?'))} cores); OS: {env.get('os', '?')}; "
             f"Python {env.get('python', '?')}"),
            "- " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v),
            *target_lines(report.get("targets") or {}),
            (f"- method: {settings.get('rounds', '?')} interleaved rounds, each >= "
             f"{settings.get('min_iterations', '?')} runs and >= {settings.get('min_seconds', '?')} s after "
             f"{settings.get('warmup', '?')} warm-up runs; quality on {settings.get('eval_size', '?')} texts"),
            *([f"- {note}"] if (note := real_lengths_note(report.get("rows") or [])) else []),
            *(f"- {note}" for note in placement_notes(report.get("rows") or [])), ""]


def trust_line(trust: dict | None) -> str:
    if not trust:
        return "**Model code:** unknown (older manifest)."
    code = (f"ON (teacher.trust_remote_code: true; the model ships {', '.join(trust['remote_code']) or 'no code'})"
            if trust["trust_remote_code"] else "off: no Python code shipped with the model was run")
    weights = {"safetensors": "safetensors", "pickle": "pickle-based, allowed by teacher.allow_pickle, read with "
               "torch.load(weights_only=True)"}.get(trust.get("weights"), trust.get("weights") or "unknown")
    return f"**Model code:** trust_remote_code {code}. **Weights:** {weights}."


def target_lines(targets: dict) -> list[str]:
    """One line per machine benched on: what it is and what onnxruntime could use there."""
    lines = []
    for name, env in targets.items():
        flags = ", ".join(k for k, v in (env.get("cpu_flags") or {}).items() if v) or "none detected"
        emulated = " (EMULATED: correctness only, timings not comparable)" if env.get("emulated") else ""
        lines.append(f"- target {name}{emulated}: "
                     f"{env.get('cpu_model', '?')} ({env.get('machine', '?')}, {env.get('cores', '?')} cores, "
                     f"{env.get('memory_gb', '?')} GB), {env.get('os', '?')}; "
                     f"{env.get('onnxruntime_package', 'onnxruntime')} "
                     f"{env.get('onnxruntime', '?')} with {', '.join(env.get('available_providers') or []) or '?'}; "
                     f"CPU flags: {flags}")
    return lines


def accuracy_lines(searches: dict, headline: str) -> list[str]:
    """Per searched artifact: what it reached, which nodes stayed in higher precision, what each step bought."""
    lines = []
    for name, acc in searches.items():
        kept = acc.get("excluded_nodes") or []
        verdict = "within budget" if acc.get("within_budget") else "NOT within budget"
        lines += [f"### {name}", "",
                  f"- budget: {headline} drop <= {acc.get('max_quality_drop')} vs the fp32 source "
                  f"({fmt(acc.get('source_quality'))}), {acc.get('time_budget_s'):g} s; reached: drop "
                  f"{fmt(acc.get('drop'))}, {verdict} ({acc.get('reason')}) in {acc.get('seconds')} s",
                  f"- kept in {acc.get('kept_precision')}: " + (", ".join(f"`{n}`" for n in kept) if kept else "none"),
                  "", f"| step | excluded groups | nodes kept | {headline} | drop | {headline} gained | p50 ms | "
                  "p50 change |", "|---|---|---|---|---|---|---|---|"]
        lines += _accuracy_steps(acc)
        lines.append("")
    return lines


def _accuracy_steps(acc: dict) -> list[str]:
    lines = []
    steps = acc.get("steps") or []
    for step, before in zip(steps, [None, *steps[:-1]]):
        gained = (step["quality"] - before["quality"] if before and step.get("quality") is not None
                  and before.get("quality") is not None else None)
        change = step["latency_ms"] - before["latency_ms"] if before else None
        best = " (kept)" if step["step"] == acc.get("best_step") else ""
        lines.append(f"| {step['step']}{best} | {', '.join(step['excluded_groups']) or '-'} | "
                     f"{step['excluded_nodes']} | {fmt(step.get('quality'))} | {fmt(step.get('drop'))} | "
                     f"{fmt(gained, '+.4f')} | {step['latency_ms']:.2f} | {fmt(change, '+.2f')} |")
    return lines
