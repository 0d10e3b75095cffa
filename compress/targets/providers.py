"""Execution providers: short names, provider options, and whether a target can really run one.

onnxruntime never fails on an unavailable provider: a known-but-missing one warns and runs on CPU, an
unknown name falls back to CPU, and onnxruntime-gpu lists CUDA even on a machine without a GPU. So a
request is checked twice: here, before anything runs, against the target's environment (what the
harness reports: available providers, machine, installed onnxruntime package, GPU device nodes); and in
the harness after creating the session, against `session.get_providers()`. A number measured on another
provider than the one requested is never reported under its name.

Importing this module is cheap (no onnxruntime): `compress validate` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.errors import CompressError

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Known:
    provider: str  # onnxruntime's name
    package: str  # what to install when onnxruntime does not list it
    gpu: bool = False  # needs an NVIDIA device node beside the package
    machine: str | None = None  # needs this platform.machine() (normalized: x86_64, arm64)


KNOWN = {
    "cpu": Known(CPU, "onnxruntime"),
    "arm": Known(CPU, "onnxruntime (aarch64 wheel)", machine="arm64"),
    "cuda": Known("CUDAExecutionProvider", "onnxruntime-gpu", gpu=True),
    "tensorrt": Known("TensorrtExecutionProvider", "onnxruntime-gpu", gpu=True),
    "openvino": Known("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "rocm": Known("ROCMExecutionProvider", "onnxruntime-rocm"),
    "dml": Known("DmlExecutionProvider", "onnxruntime-directml"),
    "qnn": Known("QNNExecutionProvider", "onnxruntime-qnn"),
    "coreml": Known("CoreMLExecutionProvider", "onnxruntime for macOS"),
    "xnnpack": Known("XnnpackExecutionProvider", "an onnxruntime build with XNNPACK"),
    "acl": Known("ACLExecutionProvider", "an onnxruntime build with the Arm Compute Library"),
}


class ProviderUnavailable(CompressError):
    """--strict-providers: a requested provider cannot run on a target (exit 1)."""


@dataclass(frozen=True)
class Provider:
    """One requested provider: the name as written, onnxruntime's name and its provider options."""

    request: str
    name: str
    options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def known(self) -> Known | None:
        return KNOWN.get(self.request.lower())


def provider_name(short: str) -> str:
    """`cpu` -> CPUExecutionProvider, ...; any other name is taken as an onnxruntime provider name."""
    known = KNOWN.get(short.lower())
    return known.provider if known else short


def parse(spec: str | dict) -> Provider:
    """`cuda`, `CUDAExecutionProvider` or `{cuda: {device_id: 1}}` (one key: the name, its options)."""
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise ValueError(f"a provider with options is a mapping with one key (its name), got {sorted(spec)}")
        (request, options), = spec.items()
        options = dict(options or {})
    else:
        request, options = spec, {}
    if not isinstance(request, str) or not request.strip():
        raise ValueError(f"a provider name must be a non-empty string, got {request!r}")
    if not all(isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in options.items()):
        raise ValueError(f"provider options of {request!r} must map names to strings, numbers or booleans")
    return Provider(request, provider_name(request), options)


def label(spec: str | dict) -> str:
    """The name a recipe gave a provider (without its options)."""
    return parse(spec).request


def normalize_machine(machine: str | None) -> str:
    machine = (machine or "").lower()
    if machine in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if machine in ("aarch64", "arm64", "armv8l"):
        return "arm64"
    return machine or "unknown"


def unavailable_reason(provider: Provider, env: dict) -> str | None:
    """Why `provider` cannot run on the target described by `env` (the harness's environment), or None.

    A short reason such as "onnxruntime-gpu not installed"; `message()` prefixes the provider.
    """
    available = list(env.get("available_providers") or [])
    known = provider.known
    machine = normalize_machine(env.get("machine"))
    if known and known.machine and machine != known.machine:
        return (f"this host is {env.get('machine') or 'unknown'}, not aarch64: run compress on an ARM machine, "
                "or bench on an ssh or qemu target")
    if provider.name not in available:
        if known:
            installed = env.get("onnxruntime_package") or "onnxruntime"
            if installed == known.package:
                return f"{installed} is installed but lists no {provider.name} ({', '.join(available) or 'none'})"
            return f"{known.package} not installed"
        return f"{provider.name} is not among this onnxruntime's providers ({', '.join(available) or 'none'})"
    if known and known.gpu and env.get("gpu_devices") == []:
        return f"no NVIDIA GPU ({env.get('onnxruntime_package') or 'onnxruntime'} lists {provider.name}, " \
               "but there is no /dev/nvidia* device)"
    return None


def message(provider: Provider | str, reason: str, target: str = "local") -> str:
    """`cuda: unavailable (onnxruntime-gpu not installed)`, with the target when it is not this machine."""
    name = provider.request if isinstance(provider, Provider) else provider
    where = "" if target == "local" else f" on {target}"
    return f"{name}: unavailable{where} ({reason})"
