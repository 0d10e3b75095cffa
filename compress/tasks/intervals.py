"""95% intervals for the report's decisions: a paired bootstrap over the held-out items, and the spread of a
speed-up over the bench's rounds. Numpy only, a fixed seed: the same results give the same intervals.

Paired: each resample draws the same items for the teacher and the variant, so the interval is that of the
drop itself (what varies with the items drawn), not of two figures measured on different texts. A drop of 0.003
on 2,000 texts reads `0.003 [-0.009, 0.015]`: the data cannot tell such a variant from the teacher.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@lru_cache(maxsize=2)
def _draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """Which items each resample takes: one matrix per item count, shared by every row of a report."""
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int32)  # 8 MB at n=2000
    draws.flags.writeable = False
    return draws


def _items(values) -> np.ndarray | None:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 1 and len(array) > 1 and np.all(np.isfinite(array)) else None


def _bounds(means: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]  # a list: the report's JSON reads back the same


def mean_interval(items, resamples: int = RESAMPLES, seed: int = SEED) -> list[float] | None:
    """The 95% bootstrap interval of the mean of per-item scores (None without at least two finite ones)."""
    values = _items(items)
    if values is None:
        return None
    return _bounds(values[_draws(len(values), resamples, seed)].mean(axis=1))


def paired_drop(reference, variant, resamples: int = RESAMPLES, seed: int = SEED) -> list[float] | None:
    """The 95% interval of mean(reference) - mean(variant), resampling the same items for both; None when the
    per-item scores are missing or not of the same items (another count)."""
    ref, out = _items(reference), _items(variant)
    if ref is None or out is None or len(ref) != len(out):
        return None
    return _bounds((ref - out)[_draws(len(ref), resamples, seed)].mean(axis=1))


def round_ratio(base_rounds, rounds) -> list[float] | None:
    """A speed-up's interval over the bench's interleaved rounds: the lowest and highest of the per-round ratios
    base / variant (round i of both measured back to back). With 3-5 rounds the range is the honest interval:
    percentiles of so few values would only narrow it."""
    base, own = _items(base_rounds), _items(rounds)
    if base is None or own is None or len(base) != len(own) or np.any(own <= 0):
        return None
    ratios = base / own
    return [float(ratios.min()), float(ratios.max())]


def upper(interval, point: float | None) -> float | None:
    """The drop a rule judges: its interval's upper bound, the point estimate where no interval was measured.
    Never below the point estimate: a bound under it (per-item scores rounded when saved, a report.json whose
    drop was edited and its interval not) would judge a better drop than the one measured."""
    if not interval:
        return point
    return float(interval[1]) if point is None else max(float(interval[1]), point)


def interval_text(point: float | None, interval, spec: str = ".4f") -> str:
    """`0.0030 [-0.0090, 0.0150]`: a figure and its interval (the figure alone without one; `-` without either)."""
    if point is None:
        return "-"
    text = format(point, spec)
    return f"{text} [{format(interval[0], spec)}, {format(interval[1], spec)}]" if interval else text
