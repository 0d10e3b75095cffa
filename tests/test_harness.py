"""The device-side harness: timing loop, statistics, provider checks, and real onnxruntime runs."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compress.targets import harness


def make_linear_onnx(path: Path, dim: int = 8, out: int = 4) -> np.ndarray:
    """input_ids (int64) -> Cast -> MatMul W -> embedding; returns W to compute the expected output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((dim, out)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "W"], ["embedding"])],
        "linear",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", dim])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", out])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weight


@pytest.fixture()
def linear(tmp_path) -> dict:
    weight = make_linear_onnx(tmp_path / "model.onnx")
    ids = np.arange(16, dtype=np.int64).reshape(2, 8)
    np.savez(tmp_path / "inputs.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    eval_ids = [np.full((3, 8), 2, np.int64), np.arange(8, dtype=np.int64).reshape(1, 8)]
    np.savez(tmp_path / "eval.npz", **{f"b{i}_input_ids": b for i, b in enumerate(eval_ids)})
    return {"dir": tmp_path, "weight": weight, "eval_ids": eval_ids}


def run_harness(folder: Path, *extra: str, script: Path | None = None) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, str(script or harness.__file__), "--model", str(folder / "model.onnx"),
         "--inputs", str(folder / "inputs.npz"), "--out", str(folder / "result.json"), *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )
    return proc.returncode, json.loads((folder / "result.json").read_text())


@pytest.mark.parametrize(
    ("warmup", "min_iterations", "min_seconds", "expect_calls_at_least"),
    [(0, 5, 0.0, 5), (3, 5, 0.0, 8), (2, 1, 0.05, 3)],  # the time minimum is checked below, not a call count
)
def test_time_loop_meets_both_minimums(warmup, min_iterations, min_seconds, expect_calls_at_least):
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.005)

    start = time.perf_counter()
    samples = harness.time_loop(fn, warmup, min_iterations, min_seconds)
    elapsed = time.perf_counter() - start

    assert len(samples) >= min_iterations
    assert len(calls) == warmup + len(samples) >= expect_calls_at_least
    assert sum(samples) / 1000 >= min_seconds * 0.95 and elapsed >= min_seconds
    assert all(4.5 <= s < 100 for s in samples)  # ms, each one a 5 ms sleep


@pytest.mark.parametrize(("inputs", "min_iterations", "expect_samples"), [(3, 5, 6), (4, 4, 4), (5, 1, 5)])
def test_time_loop_cycles_through_inputs_in_whole_passes(inputs, min_iterations, expect_samples):
    seen = []

    samples = harness.time_loop([lambda i=i: seen.append(i) for i in range(inputs)], 2, min_iterations, 0.0)

    assert len(samples) == expect_samples and seen[2:] == [i % inputs for i in range(expect_samples)]
    assert seen[:2] == [0, 1 % inputs]  # the warm-up runs go through the inputs too


def test_real_groups_and_lengths_read_grouped_inputs():
    arrays = {"g1_input_ids": np.ones((1, 3), np.int64), "g1_attention_mask": np.ones((1, 3), np.int64),
              "g0_input_ids": np.ones((2, 5), np.int64), "g0_attention_mask": np.array([[1] * 5, [1, 1, 0, 0, 0]])}

    groups = harness.real_groups(arrays)

    assert [g["input_ids"].shape for g in groups] == [(2, 5), (1, 3)]
    assert harness.real_lengths(groups) == {"groups": 2, "texts": 3, "median": 3, "min": 2, "max": 5,
                                            "padded_median": 4.0}
    assert harness.real_groups({"input_ids": np.ones((1, 4)), "attention_mask": np.ones((1, 4))}) == []


def test_summarize_matches_numpy_percentiles():
    samples = list(np.random.default_rng(1).gamma(2.0, 3.0, size=101))

    stats = harness.summarize(samples, batch_size=4)

    for q in (50, 90, 99):
        assert stats["latency_ms"][f"p{q}"] == pytest.approx(np.percentile(samples, q))
    assert stats["latency_ms"]["mean"] == pytest.approx(np.mean(samples))
    assert stats["latency_ms"]["stdev"] == pytest.approx(np.std(samples, ddof=1))
    assert stats["throughput"] == pytest.approx(4 * 1000 / np.median(samples))


@pytest.mark.parametrize(
    ("requested", "used", "ok"),
    [
        ("CPUExecutionProvider", ["CPUExecutionProvider"], True),
        ("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"], True),
        ("CUDAExecutionProvider", ["CPUExecutionProvider"], False),  # the silent fallback
        ("TensorrtExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"], False),
        ("CPUExecutionProvider", [], False),
    ],
)
def test_check_providers_refuses_a_fallback(requested, used, ok):
    reason = harness.check_providers(requested, used)

    assert (reason is None) == ok
    if not ok:
        assert reason


def test_harness_times_and_evaluates_a_real_session(linear):
    folder = linear["dir"]

    rc, result = run_harness(folder, "--eval", str(folder / "eval.npz"), "--eval-out", str(folder / "out.npz"),
                             "--warmup", "2", "--min-iterations", "30", "--min-seconds", "0.05")

    assert rc == 0 and result["status"] == "ok", result
    assert result["providers_used"][0] == "CPUExecutionProvider"
    assert (result["batch_size"], result["seq_len"]) == (2, 8)
    assert len(result["samples_ms"]) >= 30 and result["latency_ms"]["n"] == len(result["samples_ms"])
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p90"] <= result["latency_ms"]["p99"]
    assert result["throughput"] == pytest.approx(2 * 1000 / result["latency_ms"]["p50"])
    assert result["peak_rss_mb"] > 10 and result["machine"] and result["onnxruntime"]
    outputs = np.load(folder / "out.npz")
    for i, ids in enumerate(linear["eval_ids"]):
        np.testing.assert_allclose(outputs[f"b{i}_embedding"], ids.astype(np.float32) @ linear["weight"], rtol=1e-5)


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider", "NoSuchProvider"])
def test_harness_reports_unavailable_provider_without_numbers(linear, provider):
    rc, result = run_harness(linear["dir"], "--provider", provider, "--min-seconds", "0")

    assert rc == 0
    assert result["status"] == "unavailable"
    assert provider in result["reason"]
    assert not {"latency_ms", "samples_ms", "throughput", "peak_rss_mb"} & set(result)


def test_harness_reports_error_when_an_input_is_missing(linear):
    folder = linear["dir"]
    np.savez(folder / "inputs.npz", attention_mask=np.ones((1, 8), np.int64))

    rc, result = run_harness(folder, "--min-seconds", "0")

    assert rc == 1
    assert result["status"] == "error" and "input_ids" in result["reason"]


def test_harness_imports_only_stdlib_numpy_and_onnxruntime():
    tree = ast.parse(Path(harness.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}

    # onnxruntime-genai is optional: imported inside the function that runs a genai bundle, never at module level
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top - set(sys.stdlib_module_names) <= {"numpy", "onnxruntime"}
    assert imported - set(sys.stdlib_module_names) <= {"numpy", "onnxruntime", "onnxruntime_genai"}


def test_harness_runs_as_a_lone_copied_file(linear, tmp_path_factory):
    lone = tmp_path_factory.mktemp("device") / "harness.py"
    shutil.copy2(harness.__file__, lone)

    rc, result = run_harness(linear["dir"], "--min-iterations", "3", "--min-seconds", "0", script=lone)

    assert rc == 0 and result["status"] == "ok" and len(result["samples_ms"]) >= 3


def test_harness_peak_rss_is_its_own_not_the_parents(linear):
    ballast = np.ones(50_000_000, dtype=np.float64)  # 400 MB touched in the parent before the fork

    rc, result = run_harness(linear["dir"], "--min-iterations", "3", "--min-seconds", "0")

    assert rc == 0 and ballast.sum() > 0
    assert harness.peak_rss_mb() > 400 > result["peak_rss_mb"] > 10


@pytest.mark.parametrize(("provider", "mode", "bound"), [
    ("CPUExecutionProvider", "auto", False),  # host memory already: plain run
    ("CPUExecutionProvider", "on", True),
    ("CPUExecutionProvider", "off", False),
    ("CUDAExecutionProvider", "off", False),
])
def test_run_once_binds_inputs_and_outputs_when_asked(linear, provider, mode, bound):
    session = harness.make_session(str(linear["dir"] / "model.onnx"), "CPUExecutionProvider", 1)
    ids = np.arange(16, dtype=np.int64).reshape(2, 8)

    once, used = harness.run_once(session, {"input_ids": ids}, provider, mode)
    result = once()

    assert used is bound
    outputs = result.copy_outputs_to_cpu() if bound else result  # bound outputs stay on the device
    np.testing.assert_allclose(outputs[0], ids.astype(np.float32) @ linear["weight"], rtol=1e-5)


def test_harness_reports_io_binding_in_its_result(linear):
    rc, result = run_harness(linear["dir"], "--io-binding", "on", "--warmup", "1", "--min-iterations", "5",
                             "--min-seconds", "0")

    assert rc == 0 and result["status"] == "ok" and result["io_binding"] is True and result["latency_ms"]["p50"] > 0


# onnxruntime's verbose placement log, as 1.2x-1.3x write it (session_state.cc, VerifyEachNodeIsAssignedToAnEp).
SPLIT_LOG = """[V:onnxruntime:, session_state.cc:1598 VerifyEachNodeIsAssignedToAnEp] Node placements
[V:onnxruntime:, session_state.cc:1601 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 340
[V:onnxruntime:, session_state.cc:1603 VerifyEachNodeIsAssignedToAnEp]   MatMul (/layer.0/MatMul)
[V:onnxruntime:, session_state.cc:1601 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 4
[V:onnxruntime:, session_state.cc:1603 VerifyEachNodeIsAssignedToAnEp]   Gather (/embeddings/Gather)
[V:onnxruntime:, session_state.cc:1603 VerifyEachNodeIsAssignedToAnEp]   DynamicQuantizeLinear (/layer.0/q)
[V:onnxruntime:, session_state.cc:1603 VerifyEachNodeIsAssignedToAnEp]   MatMulInteger (/layer.0/mm)
[V:onnxruntime:, session_state.cc:1603 VerifyEachNodeIsAssignedToAnEp]   MatMulInteger (/layer.1/mm)
[W:onnxruntime:, session_state.cc:1605 VerifyEachNodeIsAssignedToAnEp] Some nodes were not assigned to the preferred execution providers"""
ALL_CPU_LOG = ("[V:onnxruntime:, session_state.cc:1601 VerifyEachNodeIsAssignedToAnEp]  All nodes placed on "
               "[CPUExecutionProvider]. Number of nodes: 7")


@pytest.mark.parametrize(("log", "nodes", "cpu_ops", "reason"), [
    (SPLIT_LOG, {"CUDAExecutionProvider": 340, "CPUExecutionProvider": 4},
     {"DynamicQuantizeLinear": 1, "MatMulInteger": 2}, None),  # Gather: shape arithmetic, kept on the CPU on purpose
    (ALL_CPU_LOG, {"CPUExecutionProvider": 7}, {}, "every node on CPUExecutionProvider"),
    ("no placement lines at all", {}, {}, None),  # nothing learnt: no claim either way
])
def test_harness_parse_placement_counts_nodes_and_cpu_compute_ops(log, nodes, cpu_ops, reason):
    placement = harness.parse_placement(log)

    assert placement == {"nodes": nodes, "cpu_ops": cpu_ops}
    why = harness.placement_reason("CUDAExecutionProvider", placement)
    assert (why is None) if reason is None else (reason in why)


def test_harness_node_placement_reads_onnxruntimes_own_log(linear):
    placement = harness.node_placement(str(linear["dir"] / "model.onnx"), "CPUExecutionProvider")

    assert placement["nodes"] == {"CPUExecutionProvider": 2}  # Cast and MatMul
    assert placement["cpu_ops"] == {}  # one provider took every node: the log gives the count, not the list


@pytest.mark.parametrize(("has_preload", "fails"), [(True, False), (True, True), (False, False)])
def test_harness_preload_cuda_libraries_keeps_stdout_clean(capsys, has_preload, fails):
    calls = []

    class FakeOrt:  # onnxruntime-gpu's preload_dlls prints what it could not load; older versions lack it
        def preload_dlls(self):
            calls.append(1)
            print("Failed to load libcudnn.so.9")
            if fails:
                raise RuntimeError("Invalid parameter of directory")

    fake = FakeOrt() if has_preload else object()
    harness.preload_cuda_libraries(fake)

    out, err = capsys.readouterr()
    assert out == "" and calls == ([1] if has_preload else [])
    assert ("Failed to load" in err) == has_preload and ("Invalid parameter" in err) == fails
