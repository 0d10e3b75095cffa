"""`python -m bench llm-peers`: the table, from the workers' results (bench/llm_peers_worker.py) and the scores.

`assemble` merges every round of a variant at a thread count: time to first token per prompt length (samples
of both new-token counts), ms per token and tokens/s per (prompt, new tokens) cell, the per-round medians (the
spread), the peak RSS of the worker; quality per text. `render` writes the markdown. Neither needs a peer
installed: a peer that could not be made or run is a row with its reason.
"""

from __future__ import annotations

import statistics

from compress.targets.harness import summarize


def merge_timings(results: list[dict]) -> dict:
    """Worker results of one variant at one thread count (one per round) -> {cells, ttft_ms, peak_rss_mb}."""
    ok = [r for r in results if r.get("status") == "ok"]
    if not ok:
        failed = next((r for r in results if r.get("status") != "ok"), {"reason": "not measured"})
        return {"status": failed.get("status", "error"), "reason": failed.get("reason")}
    cells: dict[tuple, dict] = {}
    ttft: dict[int, list] = {}
    for result in ok:
        for c in result["cells"]:
            entry = cells.setdefault((c["prompt_tokens"], c["new_tokens"]), {"samples": [], "rounds_p50": []})
            entry["samples"] += c["samples_ms"]
            entry["rounds_p50"].append(statistics.median(c["samples_ms"]))
            ttft.setdefault(c["prompt_tokens"], []).extend(c["ttft_samples_ms"])
    out_cells = {}
    for (prompt, new), entry in sorted(cells.items()):
        p50 = summarize(entry["samples"], 1)["latency_ms"]["p50"]
        spread = (max(entry["rounds_p50"]) - min(entry["rounds_p50"])) / p50 if p50 else None
        out_cells[f"p{prompt}+{new}"] = {"prompt_tokens": prompt, "new_tokens": new, "ms_per_token": p50,
                                         "tokens_per_s": 1000.0 / p50, "rounds_p50": entry["rounds_p50"],
                                         "spread": spread}
    return {"status": "ok", "rounds": len(ok), "cells": out_cells,
            "ttft_ms": {f"p{p}": summarize(v, 1)["latency_ms"]["p50"] for p, v in sorted(ttft.items())},
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ok)}


def assemble(variants: list[dict], timings: dict, quality: dict, reference: str) -> dict:
    """variants: [{name, runtime, format, size_mb, status, reason, how}]; timings: {(name, threads): [results]};
    quality: {name: {text: {perplexity, agreement} | {status, reason}}}; reference: the variant tokens/s is
    compared with (compress's fp32 ONNX teacher). Returns {rows, threads, speedups}."""
    threads = sorted({t for _, t in timings})
    rows = []
    for v in variants:
        row = {**v, "quality": quality.get(v["name"], {}), "timing": {}}
        for t in threads:
            row["timing"][t] = (merge_timings(timings.get((v["name"], t), []))
                                if v.get("status", "ok") == "ok" else {"status": v["status"], "reason": v.get("reason")})
        rows.append(row)
    ref = next((r for r in rows if r["name"] == reference), None)
    for row in rows:
        for t, timing in row["timing"].items():
            ref_timing = ref["timing"].get(t) if ref else None
            if timing.get("status") != "ok" or not ref_timing or ref_timing.get("status") != "ok":
                continue
            timing["speedup"] = {cell: timing["cells"][cell]["tokens_per_s"] / ref_cell["tokens_per_s"]
                                 for cell, ref_cell in ref_timing["cells"].items() if cell in timing["cells"]}
    return {"rows": rows, "threads": threads, "reference": reference}


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(data: dict, threads: int, texts: list[str]) -> list[str]:
    rows = data["rows"]
    cells = sorted({c for r in rows for c in (r["timing"].get(threads, {}).get("cells") or {})},
                   key=lambda c: tuple(int(x) for x in c[1:].split("+")))
    prompts = sorted({c.split("+")[0] for c in cells}, key=lambda p: int(p[1:]))
    head = (["variant", "runtime", "size MB", "peak RSS MB"] + [f"TTFT ms {p}" for p in prompts]
            + [f"tok/s {c}" for c in cells] + [f"ppl {t}" for t in texts] + ["agreement"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        timing = r["timing"].get(threads, {})
        quality = r["quality"]
        agreement = next((q.get("agreement") for q in quality.values() if isinstance(q, dict) and "agreement" in q),
                         None)
        if timing.get("status") != "ok":
            why = timing.get("reason") or r.get("reason") or "not measured"
            lines.append(f"| {r['name']} | {r['runtime']} | {_num(r.get('size_mb'))} | {timing.get('status', 'n/a')}: "
                         f"{why} |" + " |" * (len(head) - 4))
            continue
        speed = timing.get("speedup", {})
        line = [r["name"], r["runtime"], _num(r.get("size_mb")), _num(timing["peak_rss_mb"], 0)]
        line += [_num(timing["ttft_ms"].get(p)) for p in prompts]
        line += [(f"{timing['cells'][c]['tokens_per_s']:.1f} ({speed[c]:.2f}x)" if c in speed
                  else _num(timing["cells"].get(c, {}).get("tokens_per_s"))) for c in cells]
        line += [_num((quality.get(t) or {}).get("perplexity"), 2) for t in texts]
        line.append(_num(agreement, 3))
        lines.append("| " + " | ".join(line) + " |")
    return lines


def render(data: dict, meta: dict) -> str:
    texts = meta.get("texts", ["teacher text"])
    lines = ["# SmolLM2-135M-Instruct: compress's ONNX beside llama.cpp and onnxruntime-genai", "",
             f"Produced by `{meta.get('command', 'python -m bench llm-peers')}`. CPU: {meta.get('cpu', '?')}; "
             f"{meta.get('cores', '?')} cores. Versions: "
             + ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items()) + ".", ""]
    lines += meta.get("intro", [])
    for t in data["threads"]:
        lines += ["", f"## {t} thread{'s' if t > 1 else ''}", ""]
        lines += render_table(data, t, texts)
    lines += ["", "## Side by side", ""] + comparisons(data)
    notes = [r for r in data["rows"] if r.get("how")]
    if notes:
        lines += ["", "## How each variant was made", ""] + [f"- {r['name']}: {r['how']}" for r in notes]
    lines += [""] + meta.get("outro", []) + [""]
    return "\n".join(lines)


PAIRS = (("compress genai int4", "llama.cpp Q4_K_M"), ("compress genai int4", "llama.cpp Q4_1 (packaged)"),
         ("compress genai int4", "onnxruntime-genai int4"), ("compress genai int4", "compress fp32"),
         ("compress int4", "llama.cpp Q4_K_M"), ("compress int4", "compress fp32"),
         ("onnxruntime-genai int4", "llama.cpp Q4_K_M"))


def comparisons(data: dict) -> list[str]:
    """a / b for the pairs the issue asks about: tokens/s per cell, perplexity per text (same run, same threads)."""
    rows = {r["name"]: r for r in data["rows"]}
    lines = []
    for t in data["threads"]:
        for a, b in PAIRS:
            ta, tb = (rows.get(n, {}).get("timing", {}).get(t, {}) for n in (a, b))
            if ta.get("status") != "ok" or tb.get("status") != "ok":
                continue
            speed = ", ".join(f"{c} {ta['cells'][c]['tokens_per_s'] / tb['cells'][c]['tokens_per_s']:.2f}x"
                              for c in ta["cells"] if c in tb["cells"])
            ppl = ", ".join(f"{text} {qa['perplexity'] / qb['perplexity']:.3f}x"
                            for text, qa in rows[a]["quality"].items()
                            if (qb := rows[b]["quality"].get(text)) and "perplexity" in qa and "perplexity" in qb)
            lines.append(f"- {t} thread{'s' if t > 1 else ''}: {a} / {b}: tokens/s {speed}; perplexity {ppl or '-'}")
    return lines or ["- no pair measured"]
