"""Issue 20, case by case (bench/reliability_inputs.py): the documented exit code, one message, no traceback, and
every file the command did not create left as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.reliability import make_texts, make_tiny_model, pipeline_recipe
from bench.reliability_inputs import CASES, Inputs, env, run_case

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    """A tiny model, its texts and one finished run (export, quantize, bench) that cases copy or point at."""
    base = tmp_path_factory.mktemp("inputs")
    model, texts = make_tiny_model(base / "tiny"), make_texts(base / "texts.csv")
    recipe = base / "r.yaml"
    recipe.write_text(pipeline_recipe(model, texts))
    done = base / "done"
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(done)],
                          cwd=base, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Inputs(model=model, texts=texts, recipe=recipe, done=done)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case_exit_code_one_message_and_nothing_else_touched(case, inputs, tmp_path):
    problems, _ = run_case(case, tmp_path, inputs)
    assert not problems, problems
