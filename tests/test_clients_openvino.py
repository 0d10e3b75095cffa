"""OpenVINO (PyPI) loads the bundles whose operators it has: a freshly made tiny BERT bundle through export and
quantize; what compress reports as onnxruntime-only (int8-dynamic's fused QAttention) is what OpenVINO refuses."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_bert
from test_quantize import _inputs, _recipe, _texts_csv

from compress.artifacts import Artifact, sha256_path
from compress.context import RunContext
from compress.stages import export, quantize

SCHEMES = ["int8-portable", "int8-dynamic", "int8-static", "int4-weight"]


def _openvino():
    try:
        import openvino
    except ImportError as exc:  # a skip with its reason in the summary (-ra), never a silent pass
        pytest.skip(f"openvino cannot be imported ({exc}); pip install 'compress[test]' installs it")
    return openvino


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict:
    """{scheme: quantized bundle artifact} of a tiny BERT exported as the quickstart does (fused graph)."""
    _openvino()
    root = tmp_path_factory.mktemp("openvino")
    model_dir = make_tiny_bert(root / "tiny-bert")
    recipe = _recipe(model_dir, _texts_csv(root / "texts.csv"), True)
    teacher = Artifact("teacher", model_dir, "hf-model", sha256_path(model_dir), {"role": "teacher"})
    ctx = RunContext(run_dir=root / "run", recipe=recipe, stage_name="export", artifacts={"teacher": teacher})
    [onnx_bundle] = export.run(export.Config(optimize=True, parity_texts=8), ctx)
    ctx = RunContext(run_dir=root / "run", recipe=recipe, stage_name="quantize",
                     artifacts={"teacher": teacher, onnx_bundle.name: onnx_bundle})
    return {a.metadata["precision"]: a for a in quantize.run(quantize.Config(schemes=SCHEMES, check_size=8, int8={"form": "fused"}), ctx)}


@pytest.mark.parametrize("scheme, onnxruntime_only", [
    ("int8-portable", False), ("int8-static", False), ("int4-weight", False), ("int8-dynamic", True),
])
def test_openvino_loads_what_is_not_reported_onnxruntime_only(bundles, scheme, onnxruntime_only):
    import onnxruntime as ort

    ov = _openvino()
    bundle = bundles[scheme].path
    feed = _inputs(bundle)
    reported = bundles[scheme].metadata["runtimes"]["onnxruntime_only"]

    if onnxruntime_only:
        assert reported == ["com.microsoft.QAttention", "com.microsoft.QEmbedLayerNormalization"]
        with pytest.raises(Exception, match="No conversion rule found for operations: com.microsoft.QAttention"):
            ov.Core().compile_model(ov.Core().read_model(str(bundle / "model.onnx")), "CPU")
        return
    compiled = ov.Core().compile_model(ov.Core().read_model(str(bundle / "model.onnx")), "CPU")
    got = compiled(feed)[0]
    want = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]

    assert reported == [] and got.shape == want.shape
    cosine = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() > 0.999


def test_openvino_portable_int8_has_standard_operators_only(bundles):
    import onnx

    from compress.quant_tools import op_domains

    model = onnx.load(str(bundles["int8-portable"].path / "model.onnx"))

    assert list(op_domains(model)) == ["ai.onnx"] and bundles["int8-portable"].metadata["runtimes"]["standard_onnx"]
