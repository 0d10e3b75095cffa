"""bench/ablation.py: `python -m bench ablation --tiny` on a tiny in-process BERT (seconds of training, no Optimum)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import make_tiny_bert

from bench import ablation

# Every technique once (the shipped stage; depth; width + vocabulary + hidden/attention KD): the longer mixes differ
# only in minutes, and every mix's recipe is validated by the dry-run test below, without training.
TINY_MIXES = ["quickstart", "depth", "depth+width+vocab+kd"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """The tiny ablation, run once: every mix, results written under a temporary folder."""
    import csv

    root = tmp_path_factory.mktemp("ablation")
    teacher = make_tiny_bert(root / "teacher")
    data = root / "texts.csv"
    words = ["good", "bad", "great", "awful", "fine", "boring", "brilliant", "dull", "moving", "flat"]
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])  # the quickstart's recipe reads fresh/rotten labels
        writer.writerows([[f"the movie was {' '.join(words[(i * 7 + j * 3) % 10] for j in range(2 + i % 9))}",
                           ("fresh", "rotten")[i % 2]] for i in range(90)])
    argv = ["--tiny", "--mixes", ",".join(TINY_MIXES), "--teacher", str(teacher), "--data", str(data), "--layers", "0", "--eval-size", "24",
            "--train-limit", "60", "--out", str(root / "results"), "--work", str(root / "work")]
    assert ablation.main(argv) == 0
    (md,) = (root / "results").glob("*-ablation.md")
    return {"md": md.read_text(), "json": json.loads(md.with_suffix(".json").read_text())}


def test_ablation_writes_one_row_per_mix_and_both_references(tiny_run):
    names = TINY_MIXES
    rows = {r["name"]: r for r in tiny_run["json"]["rows"]}

    assert list(rows) == [ablation.PYTORCH, ablation.OPTIMUM_PC, *names]
    table = [line for line in tiny_run["md"].splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0].removeprefix("| ") for line in table] == list(rows)
    assert rows["depth"]["status"] == "ok"  # depth only: keys every branch knows
    for name in names:  # the others ran, or were skipped for keys this code does not know yet
        row = rows[name]
        assert row["status"] == "ok" or (row["status"] == "skipped" and "recipe keys not known here" in row["reason"])
        assert row["status"] != "skipped" or f"| {name} | {row['minutes']:g} | skipped: " in tiny_run["md"]


def test_ablation_numbers_come_from_the_run(tiny_run):
    data = tiny_run["json"]
    cells, quality = data["measured"]["cells"], data["quality"]

    for row in data["rows"]:
        if row["status"] != "ok":
            continue
        name = row["name"]
        assert row["p50_b1_s128_ms"] == cells[f"{name}|b1"]["p50_ms"] > 0
        assert row["p50_b1_real_ms"] == cells[f"{name}|b1|real"]["p50_ms"] > 0
        assert row["cosine"] == quality[name]["cosine"] and row["top10_agreement"] == quality[name]["top10_agreement"]
        ratio = ablation.speedup(cells, ablation.PYTORCH, name, "b1|real")
        assert row["x_pytorch_b1_real"] == ratio and ratio > 0
        line = next(line for line in tiny_run["md"].splitlines() if line.startswith(f"| {name} |"))
        assert f"{row['cosine']:.4f}" in line and f"{row['p50_b1_real_ms']:.2f}" in line
        assert f"{row['x_pytorch_b1_s128']:.2f}" in line and f"{row['size_mb']:.1f}" in line
    real = cells[f"{ablation.PYTORCH}|b1|real"]["real_lengths"]
    assert real["min"] < real["max"] and real["groups"] == 24  # every held-out text at its own length


def test_ablation_without_optimum_says_why_in_its_column(tiny_run):
    rows = tiny_run["json"]["rows"]

    assert rows[1]["status"] == "not measured" and "tiny mode" in rows[1]["reason"]
    depth = next(r for r in rows if r["name"] == "depth")
    assert depth["x_optimum_b1_s128"].startswith("not measured: tiny mode")
    assert re.search(r"\| depth \|.*\| not measured: tiny mode", tiny_run["md"])


def test_ablation_every_mix_validates_on_this_code(capsys):
    assert ablation.main(["--dry-run"]) == 0

    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines() if not line.startswith(" ")] == [
        m.name for m in ablation.MIXES]
    assert "skipped" not in printed


@pytest.mark.parametrize(("argv", "code"), [(["--mixes", "depth,nope", "--dry-run"], 2),
                                            (["--mixes", "depth", "--dry-run"], 0)])
def test_ablation_main_checks_mix_names(argv, code, capsys):
    assert ablation.main(argv) == code
    assert ("unknown mix 'nope'" in capsys.readouterr().err) == (code == 2)
