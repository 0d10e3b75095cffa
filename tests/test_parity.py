"""The export stage's parity process: one per stage, answers every model, and says why when it cannot."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_texts
from rich.console import Console

from compress import runner
from compress.errors import StageError
from compress.recipe import parse_recipe
from compress.stages.parity import ParityChecker


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bert):
    work = tmp_path_factory.mktemp("parity")
    texts, run_dir = make_tiny_texts(work / "texts.csv"), work / "run"
    recipe = parse_recipe(
        f"version: 1\nname: t\ntask: sentence-embedding\nteacher: {{source: {tiny_bert}}}\n"
        f"data: {{source: {texts}, eval_size: 10}}\nstages:\n  - kind: export\n    parity_texts: 4\n")
    manifest = runner.run(recipe, run_dir, console=Console(quiet=True))
    assert manifest["stages"]["export"]["metrics"]["teacher.onnx"]["parity_texts"] == 4
    return run_dir / "artifacts" / "teacher.onnx"


def _inputs(path, seq: int = 8):
    ids = np.full((2, seq), 101, dtype=np.int64)
    np.savez(path, input_ids=ids, attention_mask=np.ones_like(ids))
    return path


def test_parity_checker_answers_every_model_from_one_process(tmp_path, bundle, tiny_bert):
    inputs = _inputs(tmp_path / "in.npz")
    with ParityChecker() as checker:
        first = checker.check("sentence-embedding", tiny_bert, bundle, inputs)
        pid = checker.proc.pid
        second = checker.check("sentence-embedding", tiny_bert, bundle, inputs)
        assert checker.proc.pid == pid
    assert checker.proc.returncode == 0  # stdin closed: it ended by itself
    assert first == second and first["parity_texts"] == 2 and first["parity_max_abs"] < 1e-3


@pytest.mark.parametrize("case, expected", [
    ("missing_bundle", "NO_SUCHFILE"),         # onnxruntime's own words come back
    ("process_gone", "failed to run"),
])
def test_parity_checker_says_why_it_cannot_compare(tmp_path, bundle, tiny_bert, case, expected):
    inputs = _inputs(tmp_path / "in.npz")
    with ParityChecker() as checker:
        checker.start()
        if case == "process_gone":
            checker.proc.kill()
            checker.proc.wait()
        target = tmp_path / "nowhere" if case == "missing_bundle" else bundle
        with pytest.raises(StageError, match="parity check failed to run") as err:
            checker.check("sentence-embedding", tiny_bert, target, inputs)
        assert expected in str(err.value)
        if case == "missing_bundle":  # one model's failure leaves the process serving the next
            assert checker.check("sentence-embedding", tiny_bert, bundle, inputs)["parity_max_abs"] < 1e-3
