"""Stage quantize on a tiny BERT exported in-process (fused and unfused), and CPU feature detection."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_bert

from compress.artifacts import Artifact, sha256_path
from compress.context import RunContext
from compress.errors import StageError
from compress.recipe import parse_recipe
from compress.stages import export, quantize
from compress.targets.cpu import cpu_info, pick_int8_format

SCHEMES = ["int8-dynamic", "int8-portable", "int8-static", "int4-weight", "fp16"]
MIN_COSINE = {"int8-dynamic": 0.99, "int8-portable": 0.99, "int8-static": 0.99, "int4-weight": 0.99, "fp16": 0.999}


def _texts_csv(path: Path) -> Path:
    words = ["good", "bad", "great", "awful", "fine", "boring", "brilliant", "dull", "moving", "flat"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for i in range(80):
            writer.writerow([f"the movie was {' '.join(words[(i * 7 + j * 3) % 10] for j in range(3 + i % 5))}",
                             "fresh" if i % 2 else "rotten"])
    return path


def _recipe(model_dir: Path, data: Path, optimize: bool):
    return parse_recipe(f"""
version: 1
name: tiny
task: sentence-embedding
teacher: {{source: {model_dir}}}
data: {{source: {data}, eval_size: 16, max_length: 32}}
stages:
  - kind: export
    optimize: {str(optimize).lower()}
  - kind: quantize
""")


@pytest.fixture(scope="module", params=[True, False], ids=["fused", "unfused"])
def exported(request, tmp_path_factory):
    """(recipe, artifacts) with a `teacher` hf-model and its fp32 `teacher.onnx` bundle."""
    root = tmp_path_factory.mktemp("quantize")
    model_dir = make_tiny_bert(root / "tiny-bert")
    recipe = _recipe(model_dir, _texts_csv(root / "texts.csv"), request.param)
    teacher = Artifact("teacher", model_dir, "hf-model", sha256_path(model_dir), {"role": "teacher"})
    ctx = RunContext(run_dir=root / "run", recipe=recipe, stage_name="export", artifacts={"teacher": teacher})
    [onnx_bundle] = export.run(export.Config(optimize=request.param, parity_texts=8), ctx)
    return recipe, {"teacher": teacher, onnx_bundle.name: onnx_bundle}


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    """Every scheme run once per graph; returns (ctx, source artifact, source hash before, outputs)."""
    recipe, artifacts = exported
    source = artifacts["teacher.onnx"]
    before = sha256_path(source.path)
    ctx = RunContext(run_dir=tmp_path_factory.mktemp("qrun"), recipe=recipe, stage_name="quantize",
                     artifacts=dict(artifacts))
    out = quantize.run(quantize.Config(schemes=SCHEMES, int8={"form": "fused"}), ctx)  # the same form on any CPU
    return ctx, source, before, {a.metadata["precision"]: a for a in out}


def _embed(bundle: Path, inputs: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def _inputs(bundle: Path) -> dict:
    from compress.tasks.common import load_tokenizer, tokenize

    texts = ["the movie was good", "a brilliant and moving film, if a little long", "dull", "flat and boring"]
    return tokenize(load_tokenizer(bundle), texts, 32)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_scheme_runs_close_to_fp32(quantized, scheme):
    _, source, _, out = quantized
    inputs = _inputs(source.path)

    reference, got = _embed(source.path, inputs), _embed(out[scheme].path, inputs)

    assert got.shape == reference.shape and got.dtype == np.float32
    cosine = np.sum(reference * got, 1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.min() > MIN_COSINE[scheme]
    assert not np.allclose(got, reference, atol=0, rtol=0)  # the model really changed


# The tiny BERT is mostly its embedding table (30522 x 32): a scheme that leaves it in fp32 stays near 100%.
@pytest.mark.parametrize("scheme, max_ratio", [("int8-dynamic", 0.35), ("int8-portable", 0.35), ("fp16", 0.55),
                                               ("int8-static", 0.35), ("int4-weight", 0.2)])
def test_quantize_shrinks_model_file(quantized, scheme, max_ratio):
    _, source, _, out = quantized

    size, fp32 = out[scheme].metadata["size_bytes"], (source.path / "model.onnx").stat().st_size

    assert size == (out[scheme].path / "model.onnx").stat().st_size
    assert size < fp32 * max_ratio


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_names_bundle_and_records_metadata(quantized, scheme):
    ctx, _, _, out = quantized
    artifact = out[scheme]

    info = json.loads((artifact.path / "compress.json").read_text())

    assert artifact.name == f"teacher.{scheme}.onnx" and artifact.format == "onnx"
    assert artifact.metadata["source"] == "teacher.onnx" and artifact.metadata["role"] == "teacher"
    assert info["precision"] == scheme and info["output"] == "embedding"
    assert (artifact.path / "tokenizer.json").is_file()
    metrics = ctx.metrics[artifact.name]
    assert metrics["size_bytes"] > 0 and metrics["seconds"] >= 0 and metrics["options"]


# Where each scheme's model runs (compress.json and the artifact's metadata), from its operators: on the fused graph
# int8-dynamic's QAttention/QEmbedLayerNormalization are onnxruntime's own; the unfused graph has none of them.
@pytest.mark.parametrize("scheme, standard, onnxruntime_only", [
    ("int8-dynamic", {"fused": False, "unfused": True},
     {"fused": ["com.microsoft.QAttention", "com.microsoft.QEmbedLayerNormalization"], "unfused": []}),
    ("int8-portable", {"fused": True, "unfused": True}, {"fused": [], "unfused": []}),
    ("int8-static", {"fused": True, "unfused": True}, {"fused": [], "unfused": []}),
    ("int4-weight", {"fused": False, "unfused": False}, {"fused": [], "unfused": []}),
])
def test_quantize_records_where_each_scheme_runs(quantized, scheme, standard, onnxruntime_only):
    import onnx

    _, source, _, out = quantized
    fused = any(n.domain for n in onnx.load(str(source.path / "model.onnx")).graph.node)
    graph, artifact = "fused" if fused else "unfused", out[scheme]

    info = json.loads((artifact.path / "compress.json").read_text())["runtimes"]

    assert info == artifact.metadata["runtimes"]
    assert info["standard_onnx"] is standard[graph] and info["onnxruntime_only"] == onnxruntime_only[graph]
    assert info["note"].startswith("standard ONNX" if standard[graph] else "onnxruntime only" if
                                   onnxruntime_only[graph] else "onnxruntime and OpenVINO")


@pytest.mark.parametrize("scheme", ["int8-portable", "int8-static", "int4-weight"])
def test_quantize_scheme_quantizes_the_embedding_table(quantized, scheme):
    import onnx

    _, _, _, out = quantized

    model = onnx.load(str(out[scheme].path / "model.onnx"))

    tables = [i for i in model.graph.initializer if list(i.dims) == [30522, 32]]  # vocabulary x hidden size
    assert tables and all(i.data_type != onnx.TensorProto.FLOAT for i in tables)


def test_quantize_leaves_source_untouched(quantized):
    _, source, before, _ = quantized

    assert sha256_path(source.path) == before
    assert json.loads((source.path / "compress.json").read_text())["precision"] == "fp32"


def test_quantize_int8_records_why_of_weight_type(quantized):
    _, _, _, out = quantized

    options = out["int8-dynamic"].metadata["scheme_options"]

    assert options["weight_type"] in ("int8", "uint8") and isinstance(options["reduce_range"], bool)
    assert options["why"]


def test_quantize_int8_static_quantizes_activations(quantized):
    import onnx

    _, _, _, out = quantized

    ops = [n.op_type for n in onnx.load(str(out["int8-static"].path / "model.onnx")).graph.node]

    # Weights alone would give DequantizeLinear only: activations need QuantizeLinear too.
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    assert out["int8-static"].metadata["scheme_options"]["float_after_gelu"] == 2  # one FFN output per layer


@pytest.mark.parametrize("cfg, message", [
    ({"models": ["unknown.onnx"]}, "no onnx artifact named 'unknown.onnx'"),
    ({"models": ["teacher.int8-dynamic.onnx"]}, "not fp32"),
])
def test_quantize_fails_readably_when_models_are_wrong(quantized, tmp_path, cfg, message):
    ctx, _, _, out = quantized
    artifacts = {**ctx.artifacts, "teacher.int8-dynamic.onnx": out["int8-dynamic"]}
    bad = RunContext(run_dir=tmp_path, recipe=ctx.recipe, stage_name="quantize", artifacts=artifacts)

    with pytest.raises(StageError, match=message):
        quantize.run(quantize.Config(**cfg), bad)


def test_quantize_fails_readably_when_no_onnx_artifact(exported, tmp_path):
    recipe, artifacts = exported
    ctx = RunContext(run_dir=tmp_path, recipe=recipe, stage_name="quantize", artifacts={"teacher": artifacts["teacher"]})

    with pytest.raises(StageError, match="no fp32 ONNX artifact"):
        quantize.run(quantize.Config(), ctx)


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_quantize_int8_static_calibrates_with_histograms(exported, tmp_path, calibration):
    recipe, artifacts = exported
    ctx = RunContext(run_dir=tmp_path, recipe=recipe, stage_name="quantize", artifacts=dict(artifacts))
    cfg = quantize.Config(schemes=["int8-static"], int8={"calibration": calibration, "calibration_size": 20})

    [artifact] = quantize.run(cfg, ctx)

    assert artifact.metadata["scheme_options"]["calibration_texts"] == 16  # whole batches only
    assert _embed(artifact.path, _inputs(artifact.path)).shape[0] == 4


@pytest.mark.parametrize("block_size, ok", [(32, True), (128, True), (48, False)])
def test_quantize_config_checks_int4_block_size(block_size, ok):
    from pydantic import ValidationError

    if ok:
        assert quantize.Int4Options(block_size=block_size).block_size == block_size
    else:
        with pytest.raises(ValidationError, match="power of 2"):
            quantize.Int4Options(block_size=block_size)


@pytest.mark.parametrize("options, error", [
    ({"algorithm": "awq"}, "algorithm"), ({"embedding_bits": 6}, "embedding_bits"), ({"calibration_size": 0}, "calibration_size"),
])
def test_quantize_config_refuses_unknown_int4_options(options, error):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        quantize.Int4Options(**options)


@pytest.mark.parametrize("task, given, expected", [
    ("causal-lm", {}, {"symmetric": False, "embedding_bits": 8, "accuracy_level": 4, "algorithm": "q4_1"}),
    ("sentence-embedding", {}, {"symmetric": True, "embedding_bits": 4, "accuracy_level": 0, "algorithm": "rtn"}),
    ("causal-lm", {"symmetric": True, "embedding_bits": 4, "accuracy_level": 0},
     {"symmetric": True, "embedding_bits": 4, "accuracy_level": 0}),
])
def test_quantize_int4_defaults_depend_on_the_task_unless_set(task, given, expected):
    from compress.stages import quantize_int4

    opts = quantize_int4.resolved(quantize.Int4Options(**given), task)

    assert {k: getattr(opts, k) for k in expected} == expected


def test_quantize_int4_eight_bit_blocks_give_back_a_q8_0_table():
    from compress.stages.quantize_int4_algos import BITS8_ZERO, _blocks8

    rng = np.random.default_rng(0)
    scales = rng.uniform(1e-3, 1e-2, (5, 3)).astype(np.float16).astype(np.float32)  # GGUF stores them in fp16
    q = rng.integers(-127, 128, (5, 3, 32))
    q[:, :, 0] = 127  # each Q8_0 block's largest magnitude is 127 by construction
    table = (q * scales[..., None]).reshape(5, 96).astype(np.float32)

    packed, found = _blocks8(table, 32)

    restored = (packed.astype(np.float32) - BITS8_ZERO) * found[..., None]
    np.testing.assert_allclose(restored.reshape(5, 96), table, rtol=1e-6, atol=0)  # float rounding only


def test_quantize_int4_q4_1_gives_back_a_q4_1_matmul_exactly():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from compress.stages.quantize_int4_algos import q4_1

    rng = np.random.default_rng(0)
    d = rng.uniform(1e-3, 1e-2, (48, 2, 1)).astype(np.float32)
    m = rng.uniform(-0.1, 0.0, (48, 2, 1)).astype(np.float32)
    q = rng.integers(0, 16, (48, 2, 32))
    q[:, :, 0], q[:, :, 1] = 0, 15  # GGUF's Q4_1: each block's min and max are its q=0 and q=15
    weight = (d * q + m).reshape(48, 64).T.astype(np.float32)  # [K=64, N=48]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 48])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((1, 3, 64)).astype(np.float32)

    quantized = q4_1(model, exclude=[], only=None, block_size=32, accuracy_level=None)

    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("MatMulNBits") == 1 and "MatMul" in ops  # the minimum's share: a small fp32 MatMul
    y = ort.InferenceSession(quantized.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ weight, rtol=1e-4, atol=1e-5)



def test_quantize_int4_q4_1_leaves_weights_off_a_q4_1_grid_to_rtn():
    """Weights trained in float are not Q4_1 blocks: min-max Q4_1 measured far worse than rtn on them (SmolLM2's
    distilled student, perplexity 121 vs 13.9), so q4_1 takes only weights its grid gives back."""
    from onnx import TensorProto, helper, numpy_helper

    from compress.stages.quantize_int4_algos import q4_1

    weight = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32) * 0.02
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 48])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    added: list = []

    quantized = q4_1(model, exclude=[], only=None, block_size=32, accuracy_level=None, added=added)

    assert [n.op_type for n in quantized.graph.node] == ["MatMul"] and added == []

X86_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_1 avx avx2 fma f16c\n"
X86_VNNI = "model name\t: Intel Xeon\nflags\t\t: sse4_1 avx avx2 avx512f avx512bw avx512_vnni\n"
X86_AVXVNNI = "model name\t: Intel Core i7-12700\nflags\t\t: sse4_1 avx avx2 avx_vnni\n"
ARM_DOT = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimdhp asimddp i8mm\nCPU part\t: 0xd0c\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd evtstrm\n"


@pytest.mark.parametrize("text, machine, arch, present, absent", [
    (X86_AVX2, "x86_64", "x86_64", ["avx2", "fma"], ["avx512f", "avx512_vnni", "avx_vnni"]),
    (X86_VNNI, "AMD64", "x86_64", ["avx512f", "avx512_vnni"], ["avx_vnni"]),
    (ARM_DOT, "aarch64", "arm64", ["neon", "dotprod", "i8mm", "fp16"], ["sve"]),
    (ARM_PLAIN, "arm64", "arm64", ["neon"], ["dotprod"]),
])
def test_cpu_info_parses_flags(text, machine, arch, present, absent):
    info = cpu_info(text, machine)

    assert info["arch"] == arch and info["cores"] >= 1 and info["model"]
    assert all(info["flags"][f] for f in present) and not any(info["flags"][f] for f in absent)


@pytest.mark.parametrize("text, machine, weight_type, reduce_range, why", [
    (X86_AVX2, "x86_64", "int8", False, "without VNNI"),
    (X86_VNNI, "x86_64", "int8", False, "AVX512-VNNI"),
    (X86_AVXVNNI, "x86_64", "int8", False, "AVX-VNNI"),
    (ARM_DOT, "aarch64", "int8", False, "dotprod"),
    (ARM_PLAIN, "aarch64", "int8", False, "NEON"),
])
def test_cpu_pick_int8_format_follows_onnxruntime_guidance(text, machine, weight_type, reduce_range, why):
    assert pick_int8_format(cpu_info(text, machine))[:2] == (weight_type, reduce_range)
    assert why in pick_int8_format(cpu_info(text, machine))[2]


def test_cpu_info_reads_this_machine_without_numpy():
    import subprocess
    import sys

    code = "import sys, json; from compress.targets.cpu import cpu_info; print(json.dumps(cpu_info())); " \
           "assert 'numpy' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    info = json.loads(result.stdout)
    assert info["arch"] and info["cores"] >= 1 and isinstance(info["flags"], dict)
