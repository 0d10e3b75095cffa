"""Sweeps fanned out on Ray (compress/fanout.py): the same report as a sequential sweep, faults survived.

One local Ray (2 CPUs, no dashboard) is shared by the tests of this file; the plan and the report's host rules are
tested without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import make_tiny_texts
from rich.console import Console

from compress import fanout, sweep
from compress import report as reports
from compress.errors import InputError
from compress.recipe import expand_matrix, parse_recipe
from compress.report import sweep as sweep_report

QUIET = Console(stderr=True, quiet=True)

RECIPE = """\
version: 1
name: tiny
task: sentence-embedding
teacher: {{source: {model}}}
data: {{source: {data}, eval_size: 20}}
select: {{objective: size}}
stages:
  - kind: export
    parity_texts: 4
  - kind: quantize
    models: [teacher.onnx]
  - kind: {last}
matrix:
  stages.1.schemes: [[int8-dynamic], [fp16]]
  {axis}
"""
BENCH = ("bench\n    seq_lens: [16]\n    warmup: 0\n    min_iterations: 3\n    min_seconds: 0.0\n    rounds: 1\n"
         "    eval_size: 8")
BENCH_AXIS = "stages.2.batch_sizes: [[1], [2]]"
QUANTIZE = "quantize\n    name: again\n    models: [teacher.onnx]"
QUANTIZE_AXIS = "stages.2.schemes: [[int8-dynamic], [int4-weight]]"
# What differs between two runs of the same sweep: timings, and what is computed from them.
TIMED = {"p50_ms", "p90_ms", "p99_ms", "rounds_p50_ms", "throughput", "speedup", "speedup_ci", "peak_rss_mb",
         "cost_per_million", "cost_saving", "flags", "seconds", "recommendation_text", "spread", "ttft_ms",
         "tokens_per_s", "latency_ci", "p50_ci"}


def _recipe(tiny_bert, tiny_texts, last=BENCH, axis=BENCH_AXIS):
    return parse_recipe(RECIPE.format(model=tiny_bert, data=tiny_texts, last=last, axis=axis))


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMED and not k.endswith("_ms")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _table(result: dict) -> list[list[str]]:
    """The decision table's cells but its timings."""
    timed = {"p50 ms", "p90 ms", "TTFT ms", "tokens/s", "speed-up", "$ / M inf.", "flags"}
    return [[cell for name, cell in zip(reports.COLUMNS, reports.table_cells(row, result["headline"]))
             if name not in timed] for row in result["rows"]]


def _hashes(run_dir: Path) -> dict:
    """Every artifact of every variant: its sha256 (bench results hold timings: their rows' ids instead)."""
    out = {}
    for folder in sorted((run_dir / "variants").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text())
        for name, data in manifest["artifacts"].items():
            out[f"{folder.name}/{name}"] = data["sha256"] if data["format"] != "bench" else None
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("axis, after", [
    (BENCH_AXIS, [None, 0, 0, 2]),  # export shared by all; (fp16, b2) also shares (fp16, b1)'s quantize
    ("stages.0.opset: [17, 18]", [None, None, 0, 1]),  # nothing shared across opsets
])
def test_fanout_plan_waits_for_the_variant_that_computes_the_last_shared_stage(tiny_bert, tiny_texts, axis, after):
    variants = expand_matrix(_recipe(tiny_bert, tiny_texts, axis=axis))

    assert fanout.plan(variants) == after


@pytest.mark.parametrize("sets, nproc, cluster, expected", [
    ([], 1, {"CPU": 8}, {"num_cpus": 1, "num_gpus": 0}),
    (["stages.2.threads=[1, 4]"], 1, {"CPU": 8}, {"num_cpus": 4, "num_gpus": 0}),  # its widest timing
    (["stages.2.threads=[1, 4]"], 1, {"CPU": 2}, {"num_cpus": 2, "num_gpus": 0}),  # never more than there is
    ([], 3, {"CPU": 8}, {"num_cpus": 3, "num_gpus": 0}),  # --nproc
    (["stages.2.providers=[cuda]"], 1, {"CPU": 8, "GPU": 1}, {"num_cpus": 1, "num_gpus": 1}),
    (["stages.2.providers=[cpu, {CUDAExecutionProvider: {device_id: 0}}]"], 1, {"CPU": 8, "GPU": 2},
     {"num_cpus": 1, "num_gpus": 1}),
    (["stages.2.providers=[cuda]"], 1, {"CPU": 8}, {"num_cpus": 1, "num_gpus": 0}),  # reported unavailable instead
])
def test_fanout_resources_follow_the_stages(tiny_bert, tiny_texts, sets, nproc, cluster, expected):
    text = RECIPE.format(model=tiny_bert, data=tiny_texts, last=BENCH, axis=BENCH_AXIS)
    recipe = expand_matrix(parse_recipe(text, overrides=sets))[0][2]

    assert fanout.resources(recipe, nproc, cluster) == expected


@pytest.mark.parametrize("executor, message", [("ray=", "give local, ray or ray=ADDRESS"),
                                               ("dask", "give local, ray or ray=ADDRESS")])
def test_sweep_refuses_an_unknown_executor(tiny_bert, tiny_texts, tmp_path, executor, message):
    with pytest.raises(InputError, match=message):
        sweep.run_any(_recipe(tiny_bert, tiny_texts), tmp_path / "run", QUIET, executor=executor)
    assert not (tmp_path / "run").exists()


def _row(variant, p50, speedup, host):
    return {"variant": variant, "status": "ok", "runtime": "onnxruntime", "provider": "CPUExecutionProvider",
            "setting": "b1/s128/t1", "p50_ms": p50, "quality_drop": 0.0, "headline": 1.0, "flags": [],
            "artifact_sha256": variant, "speedup": speedup, "size_mb": 1.0, "precision": "int8-dynamic",
            "host": host}


@pytest.mark.parametrize("hosts, ranked", [
    (["a", "a"], ["v1/fast", "v2/slow"]),  # one host: by p50, as ever
    (["a", "b"], ["v2/slow", "v1/fast"]),  # b is a slower machine: v2's model gains more over b's own baseline
])
def test_sweep_report_compares_latencies_only_within_a_host(hosts, ranked):
    manifest = {"recipe": {"name": "s", "task": "sentence-embedding"},
                "sweep": {"matrix": {}, "cache": {}, "variants": [{"name": n, "values": {}, "stages": {}}
                                                                  for n in ("v1", "v2")]}}
    per_variant = {"v1": {"rows": [_row("fast", 2.0, 3.0, hosts[0])]},
                   "v2": {"rows": [_row("slow", 4.0, 5.0, hosts[1])]}}

    result = sweep_report.build_report(manifest, per_variant)
    markdown = sweep_report.render_markdown(result)

    assert [r["variant"] for r in result["rows"]] == ranked
    assert ("latencies are compared only within one host" in markdown) == (hosts[0] != hosts[1])
    assert ("| host |" in markdown) == (hosts[0] != hosts[1])


def test_sweep_report_marks_a_failed_variant_as_a_row_with_its_message():
    manifest = {"recipe": {"name": "s", "task": "sentence-embedding"},
                "sweep": {"matrix": {}, "cache": {}, "variants": [
                    {"name": "ok", "values": {}, "stages": {}, "status": "done"},
                    {"name": "bad", "values": {}, "stages": {}, "status": "failed", "error": "disk full"}]}}

    result = sweep_report.build_report(manifest, {"ok": {"rows": [_row("m", 2.0, 3.0, "a")]}, "bad": {}})
    markdown = sweep_report.render_markdown(result)

    failed = [r for r in result["rows"] if r["status"] == "failed"]
    assert [(r["variant"], r["rank"], r["reason"]) for r in failed] == [("bad", None, "disk full")]
    assert result["recommendation"]["variant"] == "ok/m"
    assert "| bad |  | 0 / 0 / 0 | failed: disk full |" in markdown


def test_run_without_executor_does_not_import_ray(tiny_bert, tiny_texts, tmp_path):
    recipe = tmp_path / "recipe.yaml"  # a sweep of one variant: the sweep's code path, one export
    recipe.write_text(RECIPE.format(model=tiny_bert, data=tiny_texts, last="", axis="").split("  - kind: quantize")[0]
                      + "matrix: {stages.0.opset: [17]}\n")
    code = ("import sys; from compress import cli\n"
            f"cli.app(['run', {str(recipe)!r}, '--out', {str(tmp_path / 'run')!r}], standalone_mode=False)\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n")

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "report.md").is_file()


@pytest.fixture(scope="module")
def sequential(tiny_bert, tmp_path_factory):
    """The 4-variant sweep (export, quantize x2 schemes, bench x2 batch sizes) run one variant after another."""
    root = tmp_path_factory.mktemp("sequential")
    recipe = _recipe(tiny_bert, make_tiny_texts(root / "texts.csv"))
    manifest = sweep.run_any(recipe, root / "run", QUIET)
    return recipe, root / "run", reports.write_reports(root / "run", manifest), manifest


def test_fanout_sweep_gives_the_sequential_report(local_ray, sequential, tmp_path):
    recipe, seq_dir, expected, alone = sequential

    fanned = sweep.run_any(recipe, tmp_path / "ray", QUIET, executor="ray")
    got = reports.write_reports(tmp_path / "ray", fanned)

    assert [v["status"] for v in fanned["sweep"]["variants"]] == ["done"] * 4
    assert fanned["sweep"]["cache"] == alone["sweep"]["cache"] == {"computed": 1 + 2 + 4, "shared": 3 + 2, "hit": 0}
    assert _table(got) == _table(expected)
    assert _untimed(got) == _untimed(expected)  # the whole report: rows, ranks, variants, how stages were shared
    assert _hashes(tmp_path / "ray") == _hashes(seq_dir)


def test_fanout_sweep_survives_a_killed_worker_and_resumes_its_variant(local_ray, sequential, tmp_path):
    psutil = pytest.importorskip("psutil")
    recipe, seq_dir, expected, _ = sequential
    first = expand_matrix(recipe)[0][0]
    manifest = tmp_path / "ray" / "variants" / first / "manifest.json"
    result, killed = {}, []

    thread = threading.Thread(target=lambda: result.update(sweep.run_any(recipe, tmp_path / "ray", QUIET,
                                                                         executor="ray")))
    thread.start()
    deadline = time.monotonic() + 600
    while not killed and thread.is_alive() and time.monotonic() < deadline:
        stages = json.loads(manifest.read_text())["stages"] if manifest.is_file() else {}
        if "quantize" in stages and "bench" not in stages:  # mid-variant: its bench is running
            for proc in psutil.process_iter(["cmdline"]):
                if " ".join(proc.info["cmdline"] or []).startswith(f"ray::compress:{first}"):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
        time.sleep(0.02)
    thread.join(600)

    assert killed, "the first variant finished before its worker could be killed"
    variants = result["sweep"]["variants"]
    assert [v["status"] for v in variants] == ["done"] * 4
    assert [variants[0]["stages"][s]["cache"] for s in ("export", "quantize", "bench")] == ["hit", "hit", "computed"]
    assert _hashes(tmp_path / "ray") == _hashes(seq_dir)
    assert _table(reports.write_reports(tmp_path / "ray", result)) == _table(expected)
    for folder in (tmp_path / "ray" / "variants").iterdir():  # a variant writes under its own folder only
        own = json.loads((folder / "manifest.json").read_text())
        for stage in own["stages"].values():
            if stage["cache"] != "shared":
                assert all(Path(own["artifacts"][a]["path"]).parts[0] == "artifacts" for a in stage["artifacts"])
    assert not list((tmp_path / "ray").rglob(".compress-tmp*"))  # nothing half-written left
