"""Runner: cache keys, re-runs, resumption after kill -9, atomic artifacts, the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from compress import runner
from compress.artifacts import TMP_PREFIX, atomic_path, sha256_path
from compress.errors import LockedError
from compress.recipe import parse_recipe

RECIPE = """\
version: 1
name: tiny
task: sentence-embedding
teacher: {{source: {model}}}
data: {{source: {data}, eval_size: 20}}
stages:
  - kind: export
    parity_texts: 8
{extra}"""

QUANTIZE = """\
  - kind: quantize
    schemes: [int8-dynamic, int8-static, int4-weight, fp16]
    int8: {calibration_size: 16}
"""


def recipe_text(model, data, extra=""):
    return RECIPE.format(model=model, data=data, extra=extra)


def quiet():
    return Console(stderr=True, quiet=True)


def test_runner_skips_unchanged_stages_and_reruns_changed_ones(tmp_path, tiny_bert, tiny_texts):
    recipe = parse_recipe(recipe_text(tiny_bert, tiny_texts))
    first = runner.run(recipe, tmp_path / "run", console=quiet())
    started = first["stages"]["export"]["started"]

    again = runner.run(recipe, tmp_path / "run", console=quiet())
    changed = runner.run(parse_recipe(recipe_text(tiny_bert, tiny_texts).replace("parity_texts: 8", "parity_texts: 9")),
                         tmp_path / "run", console=quiet())

    assert again["stages"]["export"]["started"] == started  # cached: the old entry is kept
    assert changed["stages"]["export"]["started"] != started
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    onnx = manifest["artifacts"]["teacher.onnx"]
    assert sha256_path(tmp_path / "run" / onnx["path"]) == onnx["sha256"]


def test_runner_reruns_a_stage_whose_artifact_was_damaged(tmp_path, tiny_bert, tiny_texts):
    recipe = parse_recipe(recipe_text(tiny_bert, tiny_texts))
    first = runner.run(recipe, tmp_path / "run", console=quiet())
    model = tmp_path / "run" / "artifacts" / "teacher.onnx" / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])

    again = runner.run(recipe, tmp_path / "run", console=quiet())

    assert again["stages"]["export"]["started"] != first["stages"]["export"]["started"]


def test_runner_refuses_a_run_dir_in_use(tmp_path, tiny_bert, tiny_texts):
    import fcntl

    from compress.rundir import claim

    run_dir = tmp_path / "run"
    claim(run_dir)  # compress's run directory: a lone .lock claims no folder (issue 29)
    with open(run_dir / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(LockedError, match="in use by another compress run"):
            runner.run(parse_recipe(recipe_text(tiny_bert, tiny_texts)), run_dir, console=quiet())


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    final = tmp_path / "artifact.bin"
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _final_entries(artifacts: Path) -> list[Path]:
    return [p for p in artifacts.iterdir() if not p.name.startswith(TMP_PREFIX)] if artifacts.exists() else []


def test_runner_resumes_after_kill_9_during_quantize(tmp_path, tiny_bert, tiny_texts):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(recipe_text(tiny_bert, tiny_texts, QUANTIZE))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "compress.cli", "run", str(recipe_file), "--out", str(run_dir)]
    killed_in_quantize = False
    for _ in range(5):  # the kill must land while a quantized artifact is being written
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            arts = run_dir / "artifacts"
            if arts.exists() and any(p.name.startswith(TMP_PREFIX) and "int" in p.name for p in arts.iterdir()):
                os.kill(proc.pid, signal.SIGKILL)
                killed_in_quantize = True
                break
            time.sleep(0.005)
        proc.wait()
        if killed_in_quantize:
            break
        runner_reset(run_dir)
    assert killed_in_quantize, "never caught the run inside quantize"

    # No file under a final name is truncated: each one is either recorded with its hash or loads whole.
    manifest = runner.read_manifest(run_dir)
    recorded = {Path(a["path"]).name: a["sha256"] for a in manifest.get("artifacts", {}).values()}
    for entry in _final_entries(run_dir / "artifacts"):
        if entry.name in recorded:
            assert sha256_path(entry) == recorded[entry.name]
        else:
            import onnx

            onnx.load(str(entry / "model.onnx"))  # complete: renamed only once fully written

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "export: cached" in rerun.stderr
    manifest = runner.read_manifest(run_dir)
    assert set(manifest["stages"]) == {"export", "quantize"}
    for artifact in manifest["artifacts"].values():
        path = Path(artifact["path"])
        path = path if path.is_absolute() else run_dir / path
        assert sha256_path(path) == artifact["sha256"]
    assert not [p for p in (run_dir / "artifacts").iterdir() if p.name.startswith(TMP_PREFIX)]


def runner_reset(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)


def test_runner_stops_at_the_stage_end_when_a_ctrl_c_was_swallowed(tmp_path, tiny_bert, tiny_texts, monkeypatch):
    """Python raises a signal's KeyboardInterrupt in whatever code runs next; inside a library's finalizer it is
    printed and dropped. The recorded signal still stops the run, before the stage is marked done."""
    from compress import procs

    real = runner._run_stage

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises here
        except KeyboardInterrupt:
            pass  # as a __del__ would
        return real(*args, **kwargs)

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(runner, "_run_stage", swallowing)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores SIGINT)
        procs.raise_on_sigterm()
        with pytest.raises(KeyboardInterrupt) as stopped:
            runner.run(parse_recipe(recipe_text(tiny_bert, tiny_texts)), tmp_path / "run", console=quiet())
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert stopped.value.stage == "export"
    manifest = tmp_path / "run" / "manifest.json"
    assert not manifest.exists() or "export" not in json.loads(manifest.read_text())["stages"]
    procs.raise_if_lost()  # the signal was reported once: nothing is left pending
