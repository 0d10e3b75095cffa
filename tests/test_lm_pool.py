"""The generate stage in several processes (compress/stages/lm_pool.py), on the tiny in-process Llama."""

from __future__ import annotations

import json

import pytest
from test_causal_lm import GENERATE, lm_recipe

from compress.runner import run

POOLED = GENERATE.replace("top_k: 4,", "top_k: 4, processes: 2,")


def generated(run_dir) -> str:
    return (run_dir / "artifacts" / "generated" / "data.jsonl").read_text()


def test_generate_pool_writes_what_one_process_writes(tmp_path, tiny_llama, lm_texts):
    run(lm_recipe(tiny_llama, lm_texts, GENERATE), tmp_path / "one")  # a tiny model: one process (auto)
    run(lm_recipe(tiny_llama, lm_texts, POOLED), tmp_path / "two")
    assert generated(tmp_path / "two") == generated(tmp_path / "one")  # each batch seeded by its number
    assert (tmp_path / "two" / "work" / "generate" / "generate.worker1.log").is_file()
    assert not list((tmp_path / "two" / "work" / "generate").glob("progress.jsonl*"))  # workers' files and jobs removed


def test_generate_pool_resumes_from_the_workers_files_after_ctrl_c(tmp_path, tiny_llama, lm_texts, monkeypatch):
    from compress import procs

    run(lm_recipe(tiny_llama, lm_texts, GENERATE), tmp_path / "whole")
    real = procs.run_children

    def ctrl_c_after_a_batch(commands, poll=None, **kwargs):
        def stop():
            poll()
            if any(p.stat().st_size for p in (tmp_path / "cut" / "work" / "generate").glob("progress.jsonl*.w*")):
                raise KeyboardInterrupt
        return real(commands, poll=stop, interval=0.2, **kwargs)

    monkeypatch.setattr(procs, "run_children", ctrl_c_after_a_batch)
    with pytest.raises(KeyboardInterrupt):
        run(lm_recipe(tiny_llama, lm_texts, POOLED), tmp_path / "cut")
    assert not (tmp_path / "cut" / "artifacts" / "generated").exists()  # no half-written artifact
    assert list((tmp_path / "cut" / "work" / "generate").glob("progress.jsonl*.w*"))  # the finished batches are kept
    monkeypatch.setattr(procs, "run_children", real)
    run(lm_recipe(tiny_llama, lm_texts, POOLED), tmp_path / "cut")
    assert generated(tmp_path / "cut") == generated(tmp_path / "whole")


def test_generate_pool_names_the_failed_worker_and_its_log(tmp_path, tiny_llama, lm_texts):
    import shutil

    from compress.errors import CompressError

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_llama, teacher)
    config = json.loads((teacher / "config.json").read_text())
    config["intermediate_size"] += 8  # the tokenizer loads, the weights do not fit the model
    (teacher / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompressError, match=r"worker 0 of 2 failed \(exit 1; log .*generate.worker0.log\): .*size mismatch"):
        run(lm_recipe(teacher, lm_texts, POOLED), tmp_path / "run")


@pytest.mark.parametrize("weights_mb, batches, threads, memory_gb, expected", [
    (60, 10, 2, 8, 2),
    (60, 10, 2, 0.3, 1),   # no room for two copies
    (60, 3, 2, 8, 1),      # too few batches to share
    (60, 10, 1, 8, 1),     # one core
    (1, 10, 2, 8, 1),      # a tiny model: a second process costs more than it saves
    (60, 10, 2, None, 1),  # memory unknown (no /proc/meminfo)
])
def test_auto_processes_takes_two_only_where_it_pays(tmp_path, monkeypatch, weights_mb, batches, threads, memory_gb,
                                                     expected):
    import torch

    from compress.stages import lm_pool

    with open(tmp_path / "model.safetensors", "wb") as handle:
        handle.truncate(int(weights_mb * 2**20))  # sparse: only its size matters
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(lm_pool, "_available_memory", lambda: None if memory_gb is None else int(memory_gb * 2**30))
    assert lm_pool.auto_processes(tmp_path, batches) == expected
