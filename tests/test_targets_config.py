"""Recipe targets (ssh, qemu), how each is opened, and the environment the harness records per target."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from compress.errors import StageError
from compress.recipe import Target
from compress.targets import harness, qemu_setup, remote

X86_CPUINFO = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_1 avx avx2 fma f16c\n"
ICX_CPUINFO = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512bw avx512_vnni\n"
ARM_CPUINFO = ("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp i8mm\nCPU implementer\t: 0x41\n"
               "CPU part\t: 0xd0c\n")
MEMINFO = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n"


@pytest.mark.parametrize(
    ("fields", "ok", "emulated"),
    [
        ({"price_per_hour": 0.1}, True, False),
        ({"ssh": "pi@pi5.local", "port": 2222, "python": "/usr/bin/python3"}, True, False),
        ({"ssh": "pi@chroot", "emulated": True}, True, True),
        ({"qemu": "aarch64"}, True, True),  # qemu implies emulated
        ({"qemu": "aarch64", "ssh": "pi@pi5"}, False, None),
        ({"ssh": "-oProxyCommand=touch /tmp/x"}, False, None),  # not an ssh option in disguise
        ({"qemu": "aarch64", "qemu_cpu": "max"}, False, None),  # QEMU 7.2's max computes int8 wrong
        ({"ssh": "pi@pi5", "port": 70000}, False, None),
    ],
)
def test_target_validates_how_a_machine_is_reached(fields, ok, emulated):
    if not ok:
        with pytest.raises(ValidationError):
            Target(**fields)
        return
    target = Target(**fields)

    assert target.emulated is emulated
    assert Target.model_validate(target.model_dump()) == target  # round trip


@pytest.mark.parametrize(
    ("fields", "kind"),
    [(None, remote.LocalTarget), ({"price_per_hour": 1.0}, remote.LocalTarget), ({"ssh": "u@h"}, remote.SshTarget)],
)
def test_open_target_picks_the_runner(fields, kind, tmp_path):
    runner = remote.open_target("t", Target(**fields) if fields else None, tmp_path)

    assert type(runner) is kind and runner.emulated is False
    runner.close()


def test_open_target_explains_a_missing_qemu_python(tmp_path):
    with pytest.raises(StageError, match="python -m compress.targets.qemu_setup"):
        remote.open_target("pi", Target(qemu="aarch64", qemu_root=str(tmp_path / "none")), tmp_path)


def test_qemu_setup_command_names_the_cpu_and_the_sysroot(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu_setup, "qemu_binary", lambda: "/usr/bin/qemu-aarch64-static")

    prefix, env = qemu_setup.command(tmp_path, "cortex-a72")

    assert prefix[:5] == ["/usr/bin/qemu-aarch64-static", "-cpu", "cortex-a72", "-L", str(tmp_path / "sysroot")]
    assert prefix[5].endswith("sysroot/usr/bin/python3.11") and env["PYTHONPATH"] == str(tmp_path / "site")


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "model", "present", "absent"),
    [
        (X86_CPUINFO, "x86_64", "AMD EPYC 7B13", ["avx2", "fma"], ["avx512f", "avx512_vnni", "asimd"]),
        (ICX_CPUINFO, "x86_64", "Intel Xeon", ["avx512f", "avx512_vnni"], ["avx_vnni"]),
        (ARM_CPUINFO, "aarch64", "Neoverse-N1", ["asimd", "asimddp", "i8mm"], ["sve", "avx2"]),
        ("", "aarch64", None, ["asimd"], ["asimddp"]),  # NEON is mandatory on ARMv8-A
    ],
)
def test_harness_cpu_environment_records_model_flags_and_memory(cpuinfo, machine, model, present, absent):
    env = harness.cpu_environment(cpuinfo, MEMINFO, machine)

    if model:
        assert env["cpu_model"] == model
    assert all(env["cpu_flags"][f] for f in present)
    assert not any(env["cpu_flags"].get(f) for f in absent)
    assert env["memory_gb"] == pytest.approx(15.62, abs=0.01) and env["cores"] >= 1


def test_harness_env_prints_this_machines_environment():
    proc = subprocess.run([sys.executable, harness.__file__, "--env"], capture_output=True, text=True, timeout=120,
                          check=False)

    env = json.loads(proc.stdout)
    assert proc.returncode == 0
    assert {"machine", "os", "cpu_model", "cpu_flags", "cores", "memory_gb", "onnxruntime", "onnxruntime_package",
            "available_providers", "gpu_devices"} <= set(env)
    assert "CPUExecutionProvider" in env["available_providers"]
