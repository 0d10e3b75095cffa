"""Decision data of a report: one row per bench row with its baseline, speed-up, quality drop and flags; which
rows may be recommended and which one is; the recipe's gates on it; and how a row is named and identified.

Pure functions over dicts: no file is read here, so the sweep report, the gate and every renderer share them.
"""

from __future__ import annotations

import math

from compress.tasks.intervals import interval_text, mean_interval, paired_drop, round_ratio, upper
from compress.tasks.quality_basis import at_chance

DEFAULT_MAX_DROP = 0.02  # the recommendation's quality budget when the recipe sets no gate
NOISY_SPREAD = 0.15  # per-round medians further apart than this (relative) make a row "noisy"
SLOWER_MARGIN = 0.05  # a quantized row is "slower than its source" only beyond this: re-runs differ that much
TIE_MARGIN = 0.03  # objective values closer than this (relative) are a tie: within the noise of re-measuring
OBJECTIVES = {"p50": "p50_ms", "p90": "p90_ms", "p99": "p99_ms", "size": "size_mb", "cost": "cost_per_million"}
BASELINES = {
    None: "teacher in PyTorch fp32 at the same batch size, sequence length and threads",
    "causal-lm": "the teacher's fp32 ONNX export at the same batch size, prompt length (s) and threads; p50/p90 "
                 "are milliseconds per generated token (greedy decoding through the key/value cache)",
}
# An ONNX model given as the teacher (no PyTorch): its fp32 self is the baseline row and the quality reference.
ONNX_INPUT = "the fp32 ONNX input (teacher.onnx, no PyTorch teacher)"
BASELINES["onnx-input"] = f"{ONNX_INPUT} at the same batch size, sequence length and threads"
QUALITY_BASIS = {
    "onnx-input": f"held-out examples against the outputs of {ONNX_INPUT}",
    None: "held-out texts against the teacher's PyTorch fp32 outputs",
    "causal-lm": "held-out teacher-style text: agreement is the share of next tokens where the variant's greedy "
                 "choice is the fp32 teacher's; perplexity (lower is better) is under the variant itself",
}


def num(value) -> float | None:
    """A finite number or None: NaN and strings never reach a comparison or a format spec."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def ratio(a, b) -> float | None:
    a, b = num(a), num(b)
    return a / b if a is not None and b else None


# ---------------------------------------------------------------- naming a row


def _setting(row: dict) -> tuple:
    """Everything that makes two measurements of one variant different: batch, sequence, session, machine."""
    return (row["batch_size"], row["seq_len"], row["threads"], row.get("inter_op_threads") or 1,
            row.get("graph_optimization") or "all", row.get("execution_mode") or "sequential",
            row.get("target") or "local")


def sequence_label(row: dict) -> str:
    """`s128`; at the data's real lengths `real(med 31)`: the held-out texts as they are, median 31 tokens."""
    if row["seq_len"] != "data":
        return f"s{row['seq_len']}"
    median = num(row.get("seq_len_median"))
    return f"real(med {median:g})" if median is not None else "real"


def real_lengths_note(rows: list[dict]) -> str:
    """What a `real(med N)` setting means, when a report has such rows ("" otherwise)."""
    if not any(r.get("seq_len") == "data" for r in rows):
        return ""
    return ("real(med N): the held-out texts at their own token lengths (median N), cycled through while timing; "
            "batch 1 unpadded, batch N padded to the longest of each group of N texts")


def placement_notes(rows: list[dict]) -> list[str]:
    """One line per GPU row whose compute nodes partly ran on the CPU (its time includes theirs and the copies)."""
    notes = []
    for row in rows:
        placement = row.get("placement") or {}
        cpu_ops, nodes = placement.get("cpu_ops") or {}, placement.get("nodes") or {}
        if row.get("status") == "ok" and cpu_ops:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(cpu_ops.items(), key=lambda kv: -kv[1]))
            notes.append(f"{row['variant']} on {short(row.get('provider'))} ({setting_label(row)}): "
                         f"{nodes.get('CPUExecutionProvider', 0)} of {sum(nodes.values())} nodes ran on the CPU "
                         f"({ops}); its time includes them and the copies to and from the device")
    return notes


def setting_label(row: dict) -> str:
    """`b1/s128/t1` (`b1/real(med 31)/t1` at the data's real lengths), plus `/i2`, `/opt-basic`, `/parallel` and
    `@target` where they differ from the defaults."""
    batch, _, threads, inter, opt, mode, target = _setting(row)
    parts = [f"b{batch}/{sequence_label(row)}/t{threads}", f"i{inter}" if inter != 1 else "",
             f"opt-{opt}" if opt != "all" else "", mode if mode != "sequential" else ""]
    return "/".join(p for p in parts if p) + (f"@{target}" if target != "local" else "")


def short(provider: str | None) -> str:
    return (provider or "-").removesuffix("ExecutionProvider")


def where(row: dict) -> str:
    """`onnxruntime/CPU`, `torch/cpu`, `onnxruntime/arm`: the runtime and the provider that actually ran.

    `arm` is the CPU provider on an aarch64 host: named as requested, or it reads like the local CPU row.
    The machine (`@target`) is part of the row's setting label, which is shown beside this everywhere.
    """
    if (row.get("provider_request") or "").lower() == "arm":
        return f"{row.get('runtime') or '-'}/arm"
    return f"{row.get('runtime') or '-'}/{short(row.get('provider_used') or row.get('provider'))}"


def row_label(row: dict) -> str:
    """`teacher.int8-dynamic.onnx onnxruntime/CPU b1/s128/t1@pi`: how a person names a row."""
    return f"{row['variant']} {where(row)} {row['setting']}"


def row_id(row: dict) -> str:
    """The bench engine's id of a row (the key of samples.json); rebuilt the same way for reports older than it."""
    if row.get("id"):
        return row["id"]
    provider = "arm" if (row.get("provider_request") or "").lower() == "arm" else row.get("provider")
    inter, opt = row.get("inter_op_threads") or 1, row.get("graph_optimization") or "all"
    mode, target = row.get("execution_mode") or "sequential", row.get("target") or "local"
    extra = [f"i{inter}" if inter != 1 else "", f"opt-{opt}" if opt != "all" else "",
             mode if mode != "sequential" else "", f"@{target}" if target != "local" else ""]
    base = f"{row['variant']}|{provider}|b{row['batch_size']}|s{row['seq_len']}|t{row['threads']}"
    return "|".join([base, *(e for e in extra if e)])


def row_key(row: dict) -> tuple:
    """What makes a row the same row in one report and across runs: the row id's parts, from the row's fields.

    Not the stored id: a sweep renames variants (`<variant>/<artifact>`) and older reports have no id.
    """
    arm = (row.get("provider_request") or "").lower() == "arm"
    return (row["variant"], "arm" if arm else row.get("provider"), row["setting"])


def is_recommended(row: dict, best: dict | None) -> bool:
    return best is not None and row_key(row) == row_key(best)


# ---------------------------------------------------------------- decision rows


def decision_rows(rows: list[dict], headline: str, max_drop: float, prices: dict | None = None) -> list[dict]:
    """The report's rows: each bench row against its baseline, with its flags; in bench order, fastest first."""
    settings = list(dict.fromkeys(_setting(r) for r in rows))
    ok = [r for r in rows if r["status"] == "ok" and r.get("latency_ms")]
    out = [_decision_row(row, ok, headline, max_drop, prices or {}) for row in rows]
    # Settings in bench order; within one, fastest first; rows that did not run last.
    return sorted(out, key=lambda e: (settings.index(_setting(e)),
                                      e["p50_ms"] is None, e["p50_ms"] or 0.0, e["variant"], e["provider"] or ""))


def _decision_row(row: dict, ok: list[dict], headline: str, max_drop: float, prices: dict) -> dict:
    base = _baseline(ok, row)
    latency = row.get("latency_ms") or {}
    quality = {k: num(v) for k, v in (row.get("quality") or {}).items()}
    value, base_value = quality.get(headline), ((base or {}).get("quality") or {}).get(headline)
    items, base_items = row.get("quality_items") or {}, (base or {}).get("quality_items") or {}
    p50 = num(latency.get("p50"))
    base_p50 = num(((base or {}).get("latency_ms") or {}).get("p50"))
    entry = {
        "id": row.get("id"),  # the bench engine's, carried so that samples and renderers find this very row
        "variant": row["variant"], "role": row.get("role"), "precision": row.get("precision"),
        "source": row.get("source"), "runtime": row.get("runtime"), "provider": row.get("provider"),
        "provider_used": row.get("provider_used"), "status": row["status"], "reason": row.get("reason"),
        "batch_size": row["batch_size"], "seq_len": row["seq_len"], "threads": row["threads"],
        "inter_op_threads": row.get("inter_op_threads"), "graph_optimization": row.get("graph_optimization"),
        "execution_mode": row.get("execution_mode"), "provider_request": row.get("provider_request"),
        "setting": setting_label(row), "size_mb": num(row.get("size_mb")),
        "seq_len_median": row.get("seq_len_median"), "real_lengths": row.get("real_lengths"),
        "placement": row.get("placement"),  # GPU rows: nodes per provider, compute ops left on the CPU
        **({"settings": row["settings"]} if row.get("settings") else {}),  # int4: algorithm, block, zero points...
        "size_ratio": ratio(row.get("size_mb"), (base or {}).get("size_mb")),
        "p50_ms": p50, "p90_ms": num(latency.get("p90")), "p99_ms": num(latency.get("p99")),
        "rounds_p50_ms": latency.get("rounds_p50") or [], "throughput": num(row.get("throughput")),
        "ttft_ms": num((row.get("ttft_ms") or {}).get("p50")), "tokens_per_s": num(row.get("tokens_per_s")),
        "peak_rss_mb": num(row.get("peak_rss_mb")),
        # Emulated timings say nothing about speed: no speed-up is computed from them.
        "speedup": ratio(base_p50, p50) if row["status"] == "ok" and not row.get("emulated") else None,
        "quality": quality, "headline": value, "headline_key": headline,
        "quality_drop": (num(base_value) - value) if num(base_value) is not None and value is not None else None,
        # 95% intervals (a paired bootstrap over the held-out items; over rounds for the speed-up): the rules
        # judge the drop's upper bound, so a difference inside the noise neither excludes nor admits a variant.
        "quality_ci": {k: ci for k, v in items.items() if (ci := mean_interval(v)) is not None},
        "drop_ci": (paired_drop(base_items.get(headline), items.get(headline))
                    if value is not None and num(base_value) is not None else None),
        "speedup_ci": (round_ratio(((base or {}).get("latency_ms") or {}).get("rounds_p50"),
                                   latency.get("rounds_p50")) if base is not None and base is not row else None),
        "is_baseline": base is row,
        "target": row.get("target") or "local", "emulated": bool(row.get("emulated")), "host": row.get("host"),
        # Accuracy against labels the teacher has not learned: agreement with it says nothing, and a variant that
        # only answers the most common label is no classifier (quality_basis.decide).
        "teacher_at_chance": headline == "accuracy" and at_chance((base or {}).get("quality")),
        "at_chance": headline == "accuracy" and at_chance(row.get("quality")),
    }
    entry["cost_per_million"] = _cost(row, prices)
    base_cost = _cost(base, prices) if base else None
    entry["cost_saving"] = (1 - entry["cost_per_million"] / base_cost
                            if entry["cost_per_million"] is not None and base_cost else None)
    entry["flags"] = _flags(row, entry, ok, max_drop)
    return entry


def _cost(row: dict, prices: dict) -> float | None:
    """Dollars per million inferences (one text each) at the row's p50, on a machine billed by the hour."""
    price = prices.get(row.get("target") or "local")
    p50 = num((row.get("latency_ms") or {}).get("p50"))
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
    if entry["at_chance"]:
        flags.append("at chance")
    elif entry["quality_drop"] is not None and drop_upper(entry) > max_drop:
        flags.append(f"quality drop over {max_drop:g}")
    elif not quality:
        flags.append("quality not measured")
    rounds = [v for v in entry["rounds_p50_ms"] if num(v)]
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


# ---------------------------------------------------------------- eligibility and the recommendation


def provider_matches(row: dict, wanted: str) -> bool:
    names = {n for n in (row.get("provider"), row.get("provider_used")) if n}
    return wanted in names or wanted.lower() in {short(n).lower() for n in names}


def eligibility(select: dict, max_drop: float, setting: str | None = None) -> list[tuple[str, object]]:
    """(reason a row is excluded, test it must pass), in the order they are checked.

    The one rule for which rows may be recommended, in a run and in a sweep; a sweep ranks across settings
    (threads may be swept), so it leaves `setting` None.
    """
    objective = select.get("objective") or "p50"
    key = OBJECTIVES[objective]
    tests = [("did not run", lambda r: r["status"] == "ok" and r.get("p50_ms") is not None)]
    if setting is not None:
        tests.append(("other setting", lambda r: r["setting"].split("@")[0] == setting))
    return tests + [
        ("other provider", lambda r: not select.get("provider") or provider_matches(r, select["provider"])),
        ("other target", lambda r: not select.get("target") or r.get("target", "local") == select["target"]),
        ("emulated timing", lambda r: not r.get("emulated")),
        ("NaN outputs", lambda r: "NaN" not in r.get("flags", [])),
        ("quality not measured", lambda r: r.get("quality_drop") is not None),
        ("at chance", lambda r: not r.get("at_chance")),
        # The drop's upper bound (95%, paired bootstrap over the held-out items) within the budget: a variant
        # whose drop may be over it is not recommended, one whose difference is inside the noise is. Agreement
        # with the teacher is a column, not a rule: a classifier that answers differently but as well qualifies.
        (f"quality drop over {max_drop:g}", lambda r: drop_upper(r) <= max_drop),
        (f"larger than {select.get('max_size_mb')} MB",
         lambda r: not select.get("max_size_mb") or (r.get("size_mb") or 0) <= select["max_size_mb"]),
        (f"no {objective}", lambda r: r.get(key) is not None),
    ]


def drop_upper(row: dict) -> float | None:
    """The drop a rule judges: its 95% interval's upper bound (the point drop for rows measured without per-item
    scores, as older reports are)."""
    return upper(row.get("drop_ci"), row.get("quality_drop"))


def drop_text(row: dict) -> str:
    """`0.0030 [-0.0090, 0.0150]`: a row's drop with its interval, where it has one."""
    return interval_text(row.get("quality_drop"), row.get("drop_ci"))


def qualifies(row: dict, select: dict, max_drop: float) -> bool:
    """Whether a row meets every constraint of `select` (at any setting)."""
    return all(test(row) for _, test in eligibility(select, max_drop))


def recommend(rows: list[dict], select: dict, max_drop: float) -> tuple[dict | None, dict]:
    """The row that meets every constraint of `select` with the lowest objective, and why (for the text)."""
    objective = select.get("objective") or "p50"
    key = OBJECTIVES[objective]
    setting = select.get("setting") or (rows[0]["setting"].split("@")[0] if rows else None)
    why = {"objective": objective, "setting": setting, "max_drop": max_drop, "excluded": {}, "ties": [],
           "provider": select.get("provider"), "target": select.get("target"), "considered": 0}
    tests = eligibility(select, max_drop, setting or "")
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
                              and r["setting"].split("@")[0] == setting), key=drop_upper,
                             default=None)
        return None, why
    low = min(r[key] for r in fit)
    tied = [r for r in fit if r[key] <= low * (1 + TIE_MARGIN)]
    # A tie within the noise goes to the better quality, then the smaller file.
    tied.sort(key=lambda r: (-(r["headline"] or 0.0), r["size_mb"] or 0.0, r[key]))
    why["ties"] = [r["variant"] for r in tied[1:]]
    return tied[0], why


def check_gates(gates: dict, best: dict | None) -> dict:
    """The recipe's gates on the recommended row: each check with its threshold, value and verdict."""
    checks = []
    # The quality gate judges the drop's upper bound, as the recommendation does; `value` stays the drop itself.
    for name, key, judged, ok in (("max_quality_drop", "quality_drop", drop_upper, lambda v, t: v <= t),
                                  ("min_speedup", "speedup", lambda r: r.get("speedup"), lambda v, t: v >= t)):
        threshold = gates.get(name)
        if threshold is None:
            continue
        value = best.get(key) if best else None
        verdict = judged(best) if best else None
        checks.append({"gate": name, "threshold": threshold, "value": value,
                       "interval": best.get("drop_ci" if key == "quality_drop" else "speedup_ci") if best else None,
                       "variant": best["variant"] if best else None,
                       "passed": verdict is not None and ok(verdict, threshold),
                       "detail": "nothing qualifies" if best is None else None})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


# ---------------------------------------------------------------- the frontier

SPEEDUP_BANDS = ((None, 2.0, "<= 2x"), (2.0, 5.0, "2-5x"), (5.0, 20.0, "5-20x"), (20.0, None, "> 20x"))


def frontier(rows: list[dict], setting: str | None) -> list[dict]:
    """Per speed-up band (<= 2x, 2-5x, 5-20x, > 20x), the variant with the best headline quality at `setting`
    (rows that ran, with a speed-up, a quality and no NaN): what each factor of speed costs. A band without a row
    is left out."""
    ran = [r for r in rows if r.get("status") == "ok" and num(r.get("speedup")) is not None
           and num(r.get("headline")) is not None and "NaN" not in (r.get("flags") or [])
           and (setting is None or r["setting"].split("@")[0] == setting)]
    out = []
    for low, high, band in SPEEDUP_BANDS:
        inside = [r for r in ran if (low is None or r["speedup"] > low) and (high is None or r["speedup"] <= high)]
        if inside:
            # The better quality; within a tie the faster.
            best = max(inside, key=lambda r: (r["headline"], r["speedup"]))
            out.append({"band": band, "variant": best["variant"], "where": where(best), "setting": best["setting"],
                        "speedup": best["speedup"], "speedup_ci": best.get("speedup_ci"),
                        "headline": best["headline"],
                        "headline_ci": (best.get("quality_ci") or {}).get(best.get("headline_key") or ""),
                        "quality_drop": best.get("quality_drop"),
                        "drop_ci": best.get("drop_ci")})
    return out
