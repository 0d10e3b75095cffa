"""Where the harness runs: this machine, a device over SSH, or an arm64 Python under QEMU.

Every target runs the same file, targets/harness.py, and hands back the same result.json (and the eval
outputs, scored here). A remote target gets the harness, the model files and the inputs once per stage
(tar over the ssh pipe, to a fresh temporary folder that is removed at the end), then one ssh command
per measurement whose stdout is a tar of the result files. SSH connections are shared (ControlMaster),
so a measurement costs one round trip, not a handshake.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from compress.artifacts import TMP_PREFIX, model_file, model_files
from compress.errors import StageError

MODEL_SUFFIXES = (".onnx", ".onnx_data", ".data")
ENV_TIMEOUT_S = 300


def _harness() -> Path:
    from compress.targets import harness

    return Path(harness.__file__)


class LocalTarget:
    """This machine: the harness in a subprocess of this Python (files stay where they are)."""

    emulated = False

    def __init__(self, name: str = "local"):
        self.name = name

    def _prefix(self) -> tuple[list[str], dict]:
        return [sys.executable], {}

    def environment(self) -> dict:
        prefix, env = self._prefix()
        proc = subprocess.run([*prefix, str(_harness()), "--env"], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=ENV_TIMEOUT_S, check=False)
        return _env_json(self.name, proc)

    def run_harness(self, model: Path, files: dict[str, Path], options: list[str], out: Path,
                    eval_out: Path | None, timeout: float) -> subprocess.CompletedProcess:
        """Run the harness on `model` (a bundle folder: onnx/model.onnx or model.onnx); `files` are its --inputs/--eval
        npz."""
        prefix, env = self._prefix()
        args = ["--model", str(model_file(model)), "--out", str(out)]
        for flag, path in files.items():
            args += [flag, str(path)]
        if eval_out is not None:
            args += ["--eval-out", str(eval_out)]
        return subprocess.run([*prefix, str(_harness()), *args, *options], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=timeout, check=False)

    def close(self) -> None:
        pass


class QemuTarget(LocalTarget):
    """An arm64 Python run by qemu-aarch64 user-mode emulation on this machine (correctness, never timing)."""

    emulated = True

    def __init__(self, name: str, root: str | None, cpu: str):
        from compress.targets import qemu_setup

        super().__init__(name)
        self.root = Path(root).expanduser() if root else qemu_setup.default_root()
        self.cpu = cpu
        if not qemu_setup.is_ready(self.root):
            raise StageError(f"target {name!r}: no arm64 Python under {self.root}: run "
                             f"`python -m compress.targets.qemu_setup --root {self.root}` (needs qemu-user-static)")

    def _prefix(self) -> tuple[list[str], dict]:
        from compress.targets import qemu_setup

        try:
            return qemu_setup.command(self.root, self.cpu)
        except FileNotFoundError as exc:
            raise StageError(f"target {self.name!r}: {exc}") from None


class SshTarget:
    """A device reached over SSH: files shipped once to a temporary folder there, results read back."""

    def __init__(self, name: str, spec, work: Path):
        self.name, self.spec, self.emulated = name, spec, bool(spec.emulated)
        self.control = Path(tempfile.mkdtemp(prefix="cssh-"))  # short: a control socket path has a length limit
        self.remote_dir: str | None = None
        self.shipped: dict[tuple, str] = {}
        self.work = work

    def _ssh(self, command: str, **kwargs) -> subprocess.CompletedProcess:
        s = self.spec
        args = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={s.connect_timeout}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}/%C", "-o", "ControlPersist=120"]
        if s.port:
            args += ["-p", str(s.port)]
        if s.identity_file:
            args += ["-i", str(Path(s.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        for option in s.ssh_options:
            args += ["-o", option]
        return subprocess.run([*args, s.ssh, command], capture_output=True, check=False, **kwargs)

    def _dir(self) -> str:
        if self.remote_dir is None:
            proc = self._ssh("mktemp -d \"${TMPDIR:-/tmp}/compress-XXXXXX\"", timeout=ENV_TIMEOUT_S)
            if proc.returncode != 0:
                raise StageError(f"target {self.name!r}: ssh {self.spec.ssh} failed (exit {proc.returncode}): "
                                 f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
            self.remote_dir = proc.stdout.decode().strip()
        return self.remote_dir

    def _ship(self, paths: list[Path]) -> str:
        """Copy files (once each, by content) into a folder of the remote temp dir; return that folder."""
        key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
        if key in self.shipped:
            return self.shipped[key]
        folder = f"{self._dir()}/f{hashlib.sha256(repr(key).encode()).hexdigest()[:12]}"
        with tempfile.TemporaryFile() as tar_file:
            with tarfile.open(fileobj=tar_file, mode="w") as tar:
                for path in paths:
                    tar.add(path, arcname=path.name)
            tar_file.seek(0)
            proc = self._ssh(f"mkdir -p {shlex.quote(folder)} && tar -C {shlex.quote(folder)} -xf -",
                             stdin=tar_file, timeout=ENV_TIMEOUT_S)
        if proc.returncode != 0:
            raise StageError(f"target {self.name!r}: copying {', '.join(p.name for p in paths)} failed: "
                             f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        self.shipped[key] = folder
        return folder

    def _python(self) -> str:
        return shlex.quote(self.spec.python)

    def environment(self) -> dict:
        folder = self._ship([_harness()])
        proc = self._ssh(f"{self._python()} {shlex.quote(folder)}/harness.py --env", timeout=ENV_TIMEOUT_S)
        return _env_json(self.name, subprocess.CompletedProcess(proc.args, proc.returncode,
                                                                proc.stdout.decode(errors="replace"),
                                                                proc.stderr.decode(errors="replace")))

    def run_harness(self, model: Path, files: dict[str, Path], options: list[str], out: Path,
                    eval_out: Path | None, timeout: float) -> subprocess.CompletedProcess:
        harness_dir = self._ship([_harness()])
        # The real files of the graph (never the bundle's root links: tar would ship them as dangling links).
        model_dir = self._ship([p for p in model_files(model) if p.name.endswith(MODEL_SUFFIXES)])
        args = ["--model", f"{model_dir}/model.onnx"]
        for flag, path in files.items():
            args += [flag, f"{self._ship([path])}/{path.name}"]
        job = f"{self._dir()}/j{out.stem}"
        args += ["--out", f"{job}/{out.name}"]
        if eval_out is not None:
            args += ["--eval-out", f"{job}/{eval_out.name}"]
        # The harness's own stdout (onnxruntime prints fallbacks there) goes to stderr: stdout is the tar.
        command = (f"mkdir -p {shlex.quote(job)} && {self._python()} {shlex.quote(harness_dir)}/harness.py "
                   f"{' '.join(shlex.quote(a) for a in [*args, *options])} 1>&2; rc=$?; "
                   f"tar -C {shlex.quote(job)} -cf - . && rm -rf {shlex.quote(job)}; exit $rc")
        proc = self._ssh(command, timeout=timeout)
        stderr = proc.stderr.decode(errors="replace")
        if proc.stdout:
            import io

            with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and name in (out.name, eval_out.name if eval_out else None):
                        data = tar.extractfile(member).read()
                        target = out.parent / name
                        tmp = target.with_name(f"{TMP_PREFIX}{os.getpid()}-{name}")
                        tmp.write_bytes(data)
                        os.replace(tmp, target)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)

    def close(self) -> None:
        import shutil

        if self.remote_dir:
            self._ssh(f"rm -rf {shlex.quote(self.remote_dir)}", timeout=60)
            self._ssh_exit()
        shutil.rmtree(self.control, ignore_errors=True)

    def _ssh_exit(self) -> None:
        s = self.spec
        args = ["ssh", "-o", f"ControlPath={self.control}/%C", "-O", "exit"]
        if s.port:
            args += ["-p", str(s.port)]
        subprocess.run([*args, s.ssh], capture_output=True, check=False, timeout=30)


def _env_json(name: str, proc: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise StageError(f"target {name!r}: the harness could not report its environment (exit {proc.returncode}); "
                         "it needs python3 with numpy and onnxruntime there: "
                         f"{(proc.stderr or '').strip()[-800:]}") from None


def open_target(name: str, spec, work: Path):
    """The runner of target `name` (`local` needs no entry in the recipe's targets)."""
    if spec is None or (spec.ssh is None and spec.qemu is None):
        return LocalTarget(name)
    if spec.qemu is not None:
        return QemuTarget(name, spec.qemu_root, spec.qemu_cpu)
    return SshTarget(name, spec, work)
