"""Provision an arm64 Python with onnxruntime for QEMU user-mode emulation (a `qemu` target). Stdlib only.

    python -m compress.targets.qemu_setup [--root DIR]

No chroot and no root needed once `qemu-user-static` is installed (Debian: apt-get install qemu-user-static):
  1. arm64 .debs of libc and python3.11, fetched with apt's private options (own lists dir; the host's
     architecture and package state are untouched) and unpacked with dpkg-deb into <root>/sysroot;
  2. aarch64 wheels of onnxruntime and numpy, pinned, via pip --target into <root>/site (both manylinux tags:
     with manylinux2014 alone pip silently picks onnxruntime 1.16.3, the last wheel with that tag);
  3. a fake ARM /proc/cpuinfo in the sysroot matching the emulated CPU: QEMU 7.2 passes the host's x86 one
     through, and `import onnxruntime` then segfaults.
Each step leaves a stamp, so a re-run does only what is missing; <root>/ready.json says it is complete.
The default root is <venv>/qemu-aarch64 (ignored by git, removed with the venv); COMPRESS_QEMU_ROOT overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ONNXRUNTIME = "1.32.0"
NUMPY = "2.4.6"
PYTHON = "3.11"
CPU = "cortex-a72"  # QEMU 7.2's default `-cpu max` computes dynamic int8 (MatMulInteger) wrong: name a real core
# Debian 12 arm64 packages that python3.11 + numpy + onnxruntime load (apt-get download takes no dependencies).
DEBS = (
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5",
    "libcrypt1", "libuuid1", "libsqlite3-0", "libtinfo6", "libncursesw6", "libreadline8",
    "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11-minimal",
)
CPUINFO = {  # /proc/cpuinfo of a Cortex-A72 (Raspberry Pi 4 class), one block per core
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0x41", "0x0", "0xd08", "3"),
    "neoverse-n1": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                    "asimddp ssbs", "0x41", "0x3", "0xd0c", "1"),
}


def default_root() -> Path:
    env = os.environ.get("COMPRESS_QEMU_ROOT")
    return Path(env) if env else Path(sys.prefix) / "qemu-aarch64"


def qemu_binary() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def paths(root: Path) -> dict:
    """Where the pieces live; `python` is the interpreter's path inside the sysroot."""
    sysroot = root / "sysroot"
    return {"sysroot": sysroot, "site": root / "site", "python": sysroot / "usr" / "bin" / f"python{PYTHON}",
            "ready": root / "ready.json"}


def command(root: Path, cpu: str = CPU) -> tuple[list[str], dict[str, str]]:
    """The command prefix that runs the arm64 Python (append a script and its arguments) and its environment."""
    p = paths(root)
    qemu = qemu_binary()
    if qemu is None:
        raise FileNotFoundError("qemu-aarch64-static not found: install Debian's qemu-user-static")
    env = {"PYTHONPATH": str(p["site"]), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return [qemu, "-cpu", cpu, "-L", str(p["sysroot"]), str(p["python"])], env


def is_ready(root: Path) -> bool:
    return paths(root)["ready"].is_file() and paths(root)["python"].is_file()


def _run(args: list[str], **kwargs) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, **kwargs)


def _sysroot(root: Path) -> None:
    p = paths(root)
    stamp = root / ".sysroot-done"
    if stamp.is_file():
        return
    apt_dir = root / "apt"
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    opts = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir / 'cache'}",
            "-o", "Debug::NoLocking=1"]
    _run(["apt-get", *opts, "update", "-qq"])
    debs = apt_dir / "debs"
    debs.mkdir(exist_ok=True)
    _run(["apt-get", *opts, "download", "-qq", *(f"{name}:arm64" for name in DEBS)], cwd=debs)
    p["sysroot"].mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(p["sysroot"])])
    stamp.touch()


def _cpuinfo(root: Path, cpu: str, cores: int = 4) -> None:
    features, implementer, variant, part, revision = CPUINFO.get(cpu, CPUINFO["cortex-a72"])
    block = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: {implementer}\n"
             f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n")
    text = "".join(f"processor\t: {i}\n{block}\n" for i in range(cores))
    target = paths(root)["sysroot"] / "proc" / "cpuinfo"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def _wheels(root: Path, onnxruntime: str, numpy: str) -> None:
    site = paths(root)["site"]
    stamp = root / f".site-done-ort{onnxruntime}-np{numpy}"
    if stamp.is_file():
        return
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".site-"))
    _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-warn-conflicts", "-q", "--target", str(tmp),
          "--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp",
          "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
          f"onnxruntime=={onnxruntime}", f"numpy=={numpy}"])
    shutil.rmtree(site, ignore_errors=True)
    os.replace(tmp, site)  # a half-installed site never looks complete
    for old in root.glob(".site-done-*"):
        old.unlink()
    stamp.touch()


def provision(root: Path | None = None, cpu: str = CPU, onnxruntime: str = ONNXRUNTIME, numpy: str = NUMPY) -> dict:
    """Build (or complete) the arm64 Python under `root`; return what ready.json records."""
    root = (root or default_root()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if qemu_binary() is None:
        raise SystemExit("qemu-aarch64-static not found: apt-get install qemu-user-static")
    _sysroot(root)
    _cpuinfo(root, cpu)
    _wheels(root, onnxruntime, numpy)
    prefix, env = command(root, cpu)
    probe = "import platform, numpy, onnxruntime as o; print(platform.machine(), o.__version__, numpy.__version__)"
    proc = subprocess.run([*prefix, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the arm64 Python does not start under QEMU (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-1500:]}")
    machine, ort_version, np_version = proc.stdout.split()
    info = {"machine": machine, "onnxruntime": ort_version, "numpy": np_version, "cpu": cpu, "python": PYTHON,
            "qemu": qemu_binary()}
    paths(root)["ready"].write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help=f"where to build it (default: {default_root()})")
    parser.add_argument("--cpu", default=CPU, choices=sorted(CPUINFO), help="the emulated CPU model")
    parser.add_argument("--onnxruntime", default=ONNXRUNTIME, help="onnxruntime version (aarch64 wheel)")
    parser.add_argument("--numpy", default=NUMPY, help="numpy version (aarch64 wheel)")
    args = parser.parse_args(argv)
    info = provision(args.root, args.cpu, args.onnxruntime, args.numpy)
    print(f"ready: {info['machine']} python {PYTHON}, onnxruntime {info['onnxruntime']}, numpy {info['numpy']} "
          f"under {info['qemu']} -cpu {info['cpu']} ({(args.root or default_root()).resolve()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
