"""bench/peers*.py: the ratio, spread and fidelity maths, the verdict and the tables (no Optimum, no Olive)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import peers, peers_report
from bench.peers_measure import fidelity, mean_pool, median_ratio, spread


@pytest.mark.parametrize(("slow", "fast", "expected"), [
    ([10.0, 20.0, 30.0], [5.0, 10.0, 15.0], 2.0),  # 2x every round
    ([10.0, 10.0, 10.0], [10.0, 5.0, 2.0], 2.0),  # the median of 1, 2, 5
    ([10.0, 12.0], [10.0, 12.0], 1.0),
])
def test_median_ratio_is_median_of_per_round_ratios(slow, fast, expected):
    result = median_ratio(slow, fast)

    assert result["median"] == pytest.approx(expected)
    assert len(result["rounds"]) == len(slow)


def test_median_ratio_skips_rounds_without_a_number():
    assert median_ratio([10.0, 0.0], [5.0, 1.0])["rounds"] == [2.0]
    assert math.isnan(median_ratio([], [])["median"])


@pytest.mark.parametrize(("values", "expected"), [
    ([10.0, 10.0, 10.0], 0.0),
    ([9.0, 10.0, 11.0], 0.2),
    ([5.0], 0.0),
    ([10.0, None, 12.0], 0.2 / 1.1),
])
def test_spread_is_range_over_median(values, expected):
    assert spread(values) == pytest.approx(expected)


@pytest.mark.parametrize(("harness", "bare", "within"), [
    ([10.2, 10.1, 10.3], [10.0, 10.0, 10.0], True),  # 2% slower: within 3%
    ([10.5, 10.4, 10.6], [10.0, 10.0, 10.0], False),  # 5% slower
    ([9.8, 9.75, 9.9], [10.0, 10.0, 10.0], True),  # faster by 2% counts as within
])
def test_fidelity_within_three_percent(harness, bare, within):
    result = fidelity(harness, bare)

    assert result["within"] is within
    assert result["ratio"] == pytest.approx(np.median([h / b for h, b in zip(harness, bare)]))


def test_mean_pool_ignores_padding_and_normalizes():
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])

    pooled = mean_pool(hidden, mask)

    assert pooled == pytest.approx(np.array([[1.0, 0.0]]))


def _rows(avx2_cosine: float = 0.974):
    def cell(p50s):
        return {"p50_ms": float(np.median(p50s)), "p90_ms": max(p50s), "rounds_p50_ms": p50s, "spread": 0.0, "n": 5}

    measured = {"batches": [1, 32], "cells": {}}
    for name, b1, b32 in (("pytorch: fp32 teacher", 20.0, 600.0), ("optimum: int8 --avx2", 10.0, 300.0),
                          ("optimum: int8 --avx2 --per_channel", 11.0, 310.0),
                          ("compress: teacher.int8-dynamic.onnx", 8.0, 280.0),
                          ("compress: student.int8-dynamic.onnx", 4.0, 140.0)):
        measured["cells"][f"{name}|b1"] = cell([b1] * 5)
        measured["cells"][f"{name}|b32"] = cell([b32] * 5)
    quality = {"pytorch: fp32 teacher": {"cosine": 1.0}, "optimum: int8 --avx2": {"cosine": avx2_cosine},
               "optimum: int8 --avx2 --per_channel": {"cosine": 0.99},
               "compress: teacher.int8-dynamic.onnx": {"cosine": 0.992},
               "compress: student.int8-dynamic.onnx": {"cosine": 0.88}}
    variants = {name: {"size_mb": 20.0, "tool_seconds": 30.0} for name in quality}
    rows = peers.build_rows(variants, measured, quality)
    comparator = peers.pick_comparator(rows)
    peers.add_speedups(rows, comparator, "vs_optimum_int8")
    peers.add_speedups(rows, "pytorch: fp32 teacher", "vs_pytorch")
    return rows, comparator


def test_pick_comparator_takes_the_fastest_optimum_int8():
    _, comparator = _rows()

    assert comparator == "optimum: int8 --avx2"


def test_pick_comparator_skips_a_faster_preset_that_loses_too_much():
    _, comparator = _rows(avx2_cosine=0.964)  # 3.6 points lost, over the 3-point bar

    assert comparator == "optimum: int8 --avx2 --per_channel"


@pytest.mark.parametrize(("flags", "arch", "expected"), [
    ({"avx2": True, "avx512f": True, "avx512bw": True, "avx512_vnni": True}, "x86_64",
     ["avx512_vnni", "avx512", "avx2"]),  # AMD EPYC Zen 4, Intel Xeon (Cascade Lake and later)
    ({"avx2": True, "avx512f": True, "avx512bw": True, "avx512_vnni": False}, "x86_64", ["avx512", "avx2"]),
    ({"avx2": True, "avx512f": False, "avx_vnni": True}, "x86_64", ["avx2"]),  # AVX-VNNI alone has no preset
    ({"avx2": False}, "x86_64", []),
    ({"dotprod": True}, "aarch64", ["arm64"]),
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", ["avx512_vnni", "avx2"]),  # a set of names works too
])
def test_optimum_presets_follow_the_cpu_flags(flags, arch, expected):
    assert peers.optimum_presets(flags, arch) == expected


def test_optimum_steps_quantize_each_preset_with_and_without_per_channel(tmp_path):
    steps, made = peers.optimum_steps("optimum-cli", tmp_path, ["avx512_vnni", "avx2"])

    int8 = sorted(name for name in made if "int8" in name)
    assert int8 == ["optimum: O2 int8 --avx512_vnni", "optimum: int8 --avx2", "optimum: int8 --avx2 --per_channel",
                    "optimum: int8 --avx512_vnni", "optimum: int8 --avx512_vnni --per_channel"]
    assert "--avx512_vnni" in steps["quantize --avx512_vnni --per_channel"]
    assert "--per_channel" in steps["quantize --avx512_vnni --per_channel"]
    assert all(set(used) <= set(steps) for _, used in made.values())
    outputs = [path for path, _ in made.values()]
    assert len(set(outputs)) == len(outputs)  # no two variants write the same file


def test_verdict_not_met_when_the_fast_variant_loses_too_much():
    rows, _ = _rows()

    v = peers.verdict(rows)

    assert v["met"] is False
    assert v["best_within_loss"]["variant"] == "compress: teacher.int8-dynamic.onnx"
    assert v["best_within_loss"]["speedup"]["1"] == pytest.approx(1.25)
    assert v["fastest"]["variant"] == "compress: student.int8-dynamic.onnx"
    assert v["fastest"]["loss_points"] == pytest.approx(12.0)


def test_verdict_met_when_loss_bar_is_loose():
    rows, _ = _rows()

    v = peers.verdict(rows, max_loss=15.0)

    assert v["met"] is True
    assert v["best_within_loss"]["variant"] == "compress: student.int8-dynamic.onnx"


def test_table_orders_by_batch1_latency_and_shows_ratios():
    rows, _ = _rows()

    lines = peers_report.table(rows)

    assert lines[2].startswith("| compress: student.int8-dynamic.onnx | 20.0 | 4.00 |")
    assert "2.50x / 2.14x" in lines[2]  # vs Optimum int8: 10/4 and 300/140
    assert "5.00x / 4.29x" in lines[2]  # vs PyTorch fp32
    assert len(lines) == 2 + len(rows)


def test_recommend_names_an_exact_and_a_fast_variant():
    rows, _ = _rows()
    for r in rows:
        r["top10_agreement"] = 0.8

    lines = peers_report._recommend(rows)

    assert "compress: teacher.int8-dynamic.onnx" in lines[0]
    assert "compress: student.int8-dynamic.onnx" in lines[1]
