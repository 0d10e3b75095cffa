"""`python -m bench frontier` (bench/frontier.py): its runs' recipes, its scores and its table, without training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import frontier


@pytest.mark.parametrize("run, scale, kinds", [
    ("quickstart", 0.5, ["distill", "distill", "export", "quantize", "quantize", "bench"]),
    ("pruned", 1.0, ["distill", "export", "quantize"]),
])
def test_frontier_run_sets_validate_and_scale_the_training_minutes(run, scale, kinds):
    from compress.recipe import load_recipe

    shipped = load_recipe(frontier.QUICKSTART)
    recipe = load_recipe(frontier.QUICKSTART, frontier.run_sets(run, scale))
    assert [s.kind for s in recipe.stages] == kinds
    minutes = [s.max_minutes for s in recipe.stages if s.kind == "distill"]
    layer_cut = next(s.max_minutes for s in shipped.stages if s.kind == "distill" and s.student.from_teacher)
    assert minutes[0] == pytest.approx(layer_cut * scale)
    if run == "pruned":
        assert recipe.stages[0].student.from_teacher.ffn == 0.5 and recipe.stages[0].student.from_teacher.heads == 0.5
    else:
        assert recipe.stages[1].student.static is not None


def test_frontier_scores_give_each_drop_with_its_paired_interval():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    teacher = rng.normal(size=(80, 16)) + labels[:, None] * 2.0
    outputs = {"teacher": teacher, "same": teacher.copy(), "noisy": teacher + rng.normal(scale=3.0, size=teacher.shape)}

    got = frontier.scores(outputs, labels, "teacher")

    assert set(got["same"]) == set(frontier.METRICS)
    assert got["same"]["cosine"]["value"] == pytest.approx(1.0)
    assert got["same"]["probe_accuracy"]["drop"] == 0.0 and got["same"]["probe_accuracy"]["drop_interval"] == [0.0, 0.0]
    noisy = got["noisy"]["cosine"]
    assert noisy["value"] < 0.9 and noisy["drop_interval"][0] <= noisy["drop"] <= noisy["drop_interval"][1]


def test_frontier_table_has_every_row_its_speedups_and_the_cpu():
    cells = {f"{name}|{key}": {"p50_ms": p50, "rounds_p50_ms": [p50, p50 * 1.1]}
             for name, p50 in ((frontier.PYTORCH, 12.0), ("static student", 0.02)) for key in ("b1", "b1|real")}
    quality = {"static student": {"probe_accuracy": {"value": 0.74, "interval": [0.7, 0.78], "drop": 0.02,
                                                     "drop_interval": [-0.01, 0.05]}}}
    rows = frontier.build_rows([(frontier.PYTORCH, "reference"), ("static student", "one table")],
                               {"cells": cells}, quality, {"static student": 11.7})
    data = {"date": "2026-12-07", "machine": "x86_64-2cpu", "command": "python -m bench frontier", "cpu": "Xeon",
            "flags": "avx2, avx512_vnni", "cores": 2, "rounds": 2, "threads": 1, "minutes_scale": 1.0,
            "eval_size": 500, "probe_texts": 250, "load_average": [1.2, 0.9], "real_lengths": {"median": 30, "min": 3, "max": 80},
            "optimum": {"status": "not measured", "reason": "Optimum is not installed"},
            "runs": {"quickstart": {"wall_seconds": 480.0, "stages": {"distill": {"seconds": 250.0}}}}, "rows": rows}

    text = frontier.render(data)

    assert rows[1]["x_pytorch_real"] == pytest.approx(600.0)
    assert "| static student | - | - | 0.740 (drop +2.0 [-1.0, +5.0]) | - | 0.02 | 600.0 |" in text
    assert "Xeon (avx2, avx512_vnni)" in text and "1.2 and 0.9" in text and "Optimum's int8: not measured" in text
    json.dumps(data)  # the .json beside the table


def test_frontier_is_a_bench_command(capsys):
    from bench.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["frontier", "--help"])
    assert stop.value.code == 0 and "--reuse" in capsys.readouterr().out
