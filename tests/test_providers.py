"""The provider registry: short names, options, and why a provider cannot run on a target's environment."""

from __future__ import annotations

import pytest

from compress.targets import harness, providers

X86 = {"machine": "x86_64", "onnxruntime_package": "onnxruntime", "gpu_devices": [],
       "available_providers": ["AzureExecutionProvider", "CPUExecutionProvider"]}
ARM = {**X86, "machine": "aarch64"}
GPU_NO_DEVICE = {**X86, "onnxruntime_package": "onnxruntime-gpu",
                 "available_providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
GPU = {**GPU_NO_DEVICE, "gpu_devices": ["/dev/nvidia0"]}
OPENVINO = {**X86, "onnxruntime_package": "onnxruntime-openvino",
            "available_providers": ["OpenVINOExecutionProvider", "CPUExecutionProvider"]}


@pytest.mark.parametrize(
    ("short", "full"),
    [("cpu", "CPUExecutionProvider"), ("CUDA", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"),
     ("openvino", "OpenVINOExecutionProvider"), ("arm", "CPUExecutionProvider"),
     ("MyExecutionProvider", "MyExecutionProvider")],
)
def test_provider_name_maps_short_names(short, full):
    assert providers.provider_name(short) == full


@pytest.mark.parametrize(
    ("spec", "request_", "name", "options"),
    [
        ("cuda", "cuda", "CUDAExecutionProvider", {}),
        ({"cuda": {"device_id": 1}}, "cuda", "CUDAExecutionProvider", {"device_id": 1}),
        ({"OpenVINOExecutionProvider": {"device_type": "CPU"}}, "OpenVINOExecutionProvider",
         "OpenVINOExecutionProvider", {"device_type": "CPU"}),
        ({"cpu": None}, "cpu", "CPUExecutionProvider", {}),
    ],
)
def test_providers_parse_reads_names_and_options(spec, request_, name, options):
    provider = providers.parse(spec)

    assert (provider.request, provider.name, provider.options) == (request_, name, options)


@pytest.mark.parametrize("spec", [{}, {"a": {}, "b": {}}, "", {"cuda": {"nested": {"x": 1}}}])
def test_providers_parse_refuses_malformed_specs(spec):
    with pytest.raises(ValueError):
        providers.parse(spec)


@pytest.mark.parametrize(
    ("spec", "env", "reason"),
    [
        ("cpu", X86, None),
        ("cuda", X86, "onnxruntime-gpu not installed"),
        ("tensorrt", X86, "onnxruntime-gpu not installed"),
        ("openvino", X86, "onnxruntime-openvino not installed"),
        ("openvino", OPENVINO, None),
        ("cuda", GPU, None),
        ("cuda", GPU_NO_DEVICE, "no NVIDIA GPU"),  # onnxruntime-gpu lists CUDA even without a GPU
        ("openvino", GPU, "onnxruntime-openvino not installed"),
        ("arm", X86, "this host is x86_64, not aarch64"),
        ("arm", ARM, None),
        ("cpu", ARM, None),
        ("NoSuchExecutionProvider", X86, "NoSuchExecutionProvider is not among this onnxruntime's providers"),
        ("AzureExecutionProvider", X86, None),
        ("coreml", X86, "onnxruntime for macOS not installed"),
    ],
)
def test_providers_unavailable_reason_names_the_missing_piece(spec, env, reason):
    got = providers.unavailable_reason(providers.parse(spec), env)

    assert (got is None) if reason is None else (got is not None and got.startswith(reason)), got


@pytest.mark.parametrize(
    ("provider", "target", "text"),
    [("cuda", "local", "cuda: unavailable (onnxruntime-gpu not installed)"),
     ("cuda", "pi5", "cuda: unavailable on pi5 (onnxruntime-gpu not installed)")],
)
def test_providers_message_reads_like_a_report_row(provider, target, text):
    assert providers.message(provider, "onnxruntime-gpu not installed", target) == text


def test_providers_this_machine_has_a_cpu_and_no_cuda():
    env = harness.environment()

    assert providers.unavailable_reason(providers.parse("cpu"), env) is None
    if env["onnxruntime_package"] == "onnxruntime":
        assert providers.unavailable_reason(providers.parse("cuda"), env) == "onnxruntime-gpu not installed"
