"""Which graph form int8-dynamic takes on the target CPU (issue 33) (layer: training : sensitivity).

onnxruntime runs a transformer's dynamic int8 in one of two forms, and which is faster depends on the CPU:
- "fused": the export's fused graph quantized as it is: QAttention, QEmbedLayerNormalization and
  DynamicQuantizeMatMul (onnxruntime-only operators).
- "matmul-integer": int8-portable's graph: every fused operator rewritten as standard ONNX first
  (compress/unfuse.py), then DynamicQuantizeLinear + MatMulInteger with s8 weights for every weight MatMul (the
  packed QKV too) and an int8 embedding table: the form of Optimum's --avx512_vnni preset. onnxruntime fuses
  the layer norms and GELU again when it loads it. (Keeping SkipLayerNormalization/BiasGelu fused while
  unfusing Attention was no faster than "fused": 15.3 vs 14.0 ms at b1, against 9.3 ms fully unfused.)
Measured on all-MiniLM-L6-v2 (Intel Xeon with AVX-512 VNNI and AMX, 1 thread, 5 interleaved rounds, cosine to
the PyTorch fp32 teacher on 300 reviews; bench/results/2026-12-06-x86_64-2cpu-peers-int8.md): matmul-integer 1.26x
faster than fused at b1 s128 (1.34x at real lengths), 1.09x at b32 (1.05x real), cosine 0.9921 vs 0.9917; and
1.17x / 1.33x faster than Optimum's fastest preset within 1 point (--avx512_vnni --per_channel). So the rule
(`auto`): matmul-integer on x86 with VNNI; elsewhere (AVX2 without VNNI, ARM: not measured) today's fused form.
Since 2026-12-07 the unfused graph scores padded keys -30, not -10000 (compress/unfuse.py: onnxruntime's Softmax
is ~9x slower on far-below-max logits), which widens the matmul-integer form's lead on padded inputs
(bench/results/2026-12-07-x86_64-2cpu-peers-int8.md).
`measure` times both forms briefly on the machine that quantizes (interleaved A B A B, median of rounds,
time-boxed) and keeps the faster one when it is faster by MIN_GAIN and loses no more than MAX_COSINE_LOSS.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

FORMS = ("fused", "matmul-integer")
DEFAULT = "fused"
MIN_GAIN = 0.05  # another form must be 5% faster than the default to be chosen: run-to-run noise is about that
MAX_COSINE_LOSS = 0.002  # ...and lose at most 0.2 points of cosine to fp32 against the default form
MIN_ROUNDS = 3


def rule(info: dict) -> tuple[str, str]:
    """(form, why) from the CPU's facts (compress/targets/cpu.py cpu_info)."""
    from compress.targets.cpu import has_vnni

    if info.get("arch") == "x86_64" and has_vnni(info):
        return "matmul-integer", ("x86 with VNNI: s8 MatMulInteger on the unfused graph measured 1.26x faster than "
                                  "the fused QAttention graph at batch 1, 1.09x at 32 (all-MiniLM-L6-v2)")
    return DEFAULT, (f"{info.get('arch')} without VNNI: the fused QAttention graph, the form not measured slower "
                     "here (int8.form: measure times both)")


def settings(recipe) -> list[tuple[int, int, int]]:
    """(batch, seq, threads) at which to time the forms: the recipe's bench stage's smallest and largest batch
    at its first fixed sequence length (the data's max_length for `data`) and first thread count."""
    bench = next((s for s in recipe.stages if getattr(s, "kind", None) == "bench"), None)
    max_length = recipe.data.max_length or 128
    if bench is None:
        return [(1, max_length, 1)]
    seq = next((s for s in bench.seq_lens if isinstance(s, int)), max_length)
    batches = sorted(set(bench.batch_sizes))
    return [(b, seq, bench.threads[0]) for b in dict.fromkeys([batches[0], batches[-1]])]


def measure(calls: dict[str, dict], budget_s: float, clock: Callable[[], float] = time.perf_counter,
            iterations: int = 3, rounds: int = 5) -> dict[str, dict]:
    """{form: {setting: median over rounds of the per-round median ms}} for `calls` ({form: {setting: call}}),
    timed interleaved (every form once per round and setting, A B A B); stops after `rounds`, or once
    `budget_s` is spent and every form has MIN_ROUNDS."""
    samples: dict = {form: {key: [] for key in by} for form, by in calls.items()}
    started = clock()
    for done in range(rounds):
        if done >= MIN_ROUNDS and clock() - started > budget_s:
            break
        for key in next(iter(calls.values())):
            for form, by in calls.items():
                by[key]()  # warm-up: the first run of a session allocates
                times = []
                for _ in range(iterations):
                    t0 = clock()
                    by[key]()
                    times.append((clock() - t0) * 1e3)
                samples[form][key].append(statistics.median(times))
    return {form: {key: statistics.median(v) for key, v in by.items()} for form, by in samples.items()}


def choose(timings: dict[str, dict], cosines: dict[str, float | None], default: str = DEFAULT) -> tuple[str, str]:
    """(form, why): the fastest form (geometric mean over the settings) when it beats `default` by MIN_GAIN and
    its cosine to fp32 is within MAX_COSINE_LOSS of the default's; else `default`."""
    def mean(form: str) -> float:
        values = list(timings[form].values())
        return math.exp(sum(math.log(v) for v in values) / len(values))

    base = mean(default)
    shown = "; ".join(f"{f} " + ", ".join(f"{k} {v:.2f} ms" for k, v in timings[f].items()) for f in timings)
    best = min(timings, key=mean)
    if best == default:
        return default, f"measured fastest here ({shown})"
    gain = base / mean(best) - 1
    if gain < MIN_GAIN:
        return default, f"{best} only {gain:.1%} faster (< {MIN_GAIN:.0%}): kept {default} ({shown})"
    lost = (cosines.get(default) or 0) - (cosines.get(best) or 0)
    if cosines.get(best) is not None and cosines.get(default) is not None and lost > MAX_COSINE_LOSS:
        return default, (f"{best} {gain:.0%} faster but loses {lost * 100:.2f} points of cosine "
                         f"(> {MAX_COSINE_LOSS * 100:g}): kept {default} ({shown})")
    return best, f"measured {gain:.0%} faster than {default} here ({shown})"


def timing_feed(feed: dict, names: list[str], batch: int, seq: int) -> dict:
    """A held-out batch made `batch` rows of `seq` tokens (rows repeated, columns cut or zero-padded)."""
    import numpy as np

    out = {}
    for name in names:
        array = np.resize(feed[name], (batch, *feed[name].shape[1:]))
        if array.ndim == 2 and array.shape[1] != seq:
            array = np.pad(array[:, :seq], ((0, 0), (0, max(0, seq - array.shape[1]))))
        out[name] = array
    return out
