"""Distributed distillation: 2 CPU processes under torchrun (gloo) run the same stage code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.artifacts import Artifact, sha256_path
from compress.errors import StageError
from compress.recipe import dump_recipe, parse_recipe


def _prepare(run_dir: Path, model: Path, data: Path, stage: str) -> None:
    """What the runner writes before launching: the resolved recipe and the manifest with the teacher."""
    recipe = parse_recipe(
        f"version: 1\nname: t\ntask: sentence-embedding\nteacher: {{source: '{model}'}}\n"
        f"data: {{source: '{data}', text_field: text, eval_size: 20, max_length: 32}}\nstages:\n  - {stage}\n")
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text(dump_recipe(recipe))
    teacher = Artifact("teacher", model, "hf-model", sha256_path(model), {"role": "teacher"})
    manifest = {"recipe_sha256": recipe.fingerprint(), "artifacts": {"teacher": teacher.to_json(run_dir)}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def test_distributed_two_ranks_agree_and_only_rank0_writes(tmp_path, tiny_bert, tiny_texts):
    from compress.runner import run_distributed
    from compress.tasks import sentence_embedding as task

    run_dir = tmp_path / "run"
    _prepare(run_dir, tiny_bert, tiny_texts,
             "{kind: distill, student: {from_teacher: {layers: [1]}}, max_steps: 4, batch_size: 8, "
             "checkpoint_every: 2}")
    metrics: dict = {}

    produced = run_distributed("distill", run_dir, 2, metrics)

    assert [a.name for a in produced] == ["student"]
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    hashes = metrics["rank_weight_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert sorted(p.name for p in (run_dir / "artifacts").iterdir()) == ["student"]
    assert produced[0].sha256 == sha256_path(run_dir / "artifacts" / "student")
    task.load_model(produced[0].path)


def test_distributed_reports_the_stage_error(tmp_path, tiny_bert, tiny_texts):
    from compress.runner import run_distributed

    run_dir = tmp_path / "run"
    _prepare(run_dir, tiny_bert, tiny_texts, "{kind: distill, student: {from_teacher: {layers: [9]}}}")

    with pytest.raises(StageError, match="the teacher has layers 0..1"):
        run_distributed("distill", run_dir, 2)


def test_worker_context_refuses_to_save(tmp_path):
    from compress.runner import WorkerContext

    ctx = WorkerContext(run_dir=tmp_path, recipe=None, stage_name="distill", artifacts={}, is_main_process=False)

    with pytest.raises(StageError, match="only rank 0 writes artifacts"):
        ctx.save("student", "hf-model", lambda tmp: tmp.mkdir())
    assert not (tmp_path / "artifacts" / "student").exists()


def write_rank(folder: str) -> int:
    """A worker for the launcher test: each rank writes its rank and the world size."""
    from compress.ranks import rank_world

    rank, world = rank_world()
    Path(folder, f"rank{rank}").write_text(str(world))
    return 0


def test_launch_runs_a_module_level_worker_on_every_rank(tmp_path, monkeypatch):
    import os

    from compress.launch import launch

    # The ranks import this test module by name, as pytest does: from tests/.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    code = launch(write_rank, [str(tmp_path)], 2)

    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
    assert (tmp_path / "rank1").read_text() == "2"


@pytest.mark.parametrize("worker", [lambda: 0, Path("x").exists])
def test_launch_refuses_a_worker_other_processes_cannot_import(worker):
    from compress.errors import CompressError
    from compress.launch import launch

    with pytest.raises(CompressError, match="not a module-level function"):
        launch(worker, [], 2)
