"""A remote target over SSH: Debian's sshd on 127.0.0.1 (key auth, a high port) as a stand-in device.

The recipe declares the device under `targets`; the bench ships the harness, two variants and the inputs
there, runs them, and the results land in the same report.json as the local rows. The stand-in's Python
is this venv's (the device needs numpy and onnxruntime, nothing of compress).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.isfile(p)), None)
pytestmark = pytest.mark.skipif(
    SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="needs OpenSSH's sshd, ssh and ssh-keygen (Debian: apt-get install openssh-server; "
           "bash install.sh --test installs it when run as root)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd on 127.0.0.1:<high port>, accepting only a fresh key; yields what a recipe target needs."""
    root = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    port = _free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=open(root / "sshd.log", "wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    target = {"ssh": f"{getpass.getuser()}@127.0.0.1", "port": port, "identity_file": str(root / "client_key"),
              "ssh_options": ["StrictHostKeyChecking=no", f"UserKnownHostsFile={root / 'known_hosts'}",
                              "LogLevel=ERROR"],
              "python": sys.executable}
    yield {"target": target, "root": root}
    proc.terminate()
    proc.wait(timeout=10)


def test_targets_ssh_stand_in_refuses_a_password_login(sshd):
    t = sshd["target"]

    proc = subprocess.run(["ssh", "-p", str(t["port"]), "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
                           *(a for o in t["ssh_options"] for a in ("-o", o)), t["ssh"], "true"],
                          capture_output=True, text=True, timeout=30, check=False)

    assert proc.returncode == 255 and "Permission denied" in proc.stderr


def test_targets_ssh_benches_two_variants_into_the_same_report(sshd, tiny_bert, tmp_path):
    from compress import report, runner
    from compress.recipe import parse_recipe

    data = tmp_path / "texts.txt"
    data.write_text("".join(f"review {i} was {'good' if i % 3 else 'rather dull'}\n" for i in range(60)))
    recipe = parse_recipe(yaml.safe_dump({
        "version": 1, "name": "ssh-target", "task": "sentence-embedding",
        "teacher": {"source": str(tiny_bert)}, "data": {"source": str(data), "eval_size": 16},
        "targets": {"dev": sshd["target"]},
        "stages": [
            {"kind": "export", "parity_texts": 4},
            {"kind": "quantize", "schemes": ["int8-dynamic"]},
            {"kind": "bench", "targets": ["local", "dev"], "providers": ["cpu", "cuda"], "rounds": 1, "warmup": 1,
             "min_iterations": 3, "min_seconds": 0.0, "seq_lens": [16]},
        ],
    }))
    run_dir = tmp_path / "run"

    manifest = runner.run(recipe, run_dir, console=Console(stderr=True, quiet=True))
    result = report.write_reports(run_dir, manifest)

    rows = _bench_doc(run_dir)["rows"]
    remote = [r for r in rows if r["target"] == "dev"]
    assert sorted((r["variant"], r["provider_request"], r["status"]) for r in remote) == [
        ("teacher.int8-dynamic.onnx", "cpu", "ok"), ("teacher.int8-dynamic.onnx", "cuda", "unavailable"),
        ("teacher.onnx", "cpu", "ok"), ("teacher.onnx", "cuda", "unavailable")]
    for row in remote:
        assert row["emulated"] is False and row["id"].endswith("|@dev")
        if row["status"] == "ok":
            assert row["provider_used"] == "CPUExecutionProvider" and row["latency_ms"]["p50"] > 0
            assert row["quality"]["cosine"] > (0.999 if row["precision"] == "fp32" else 0.9)
        else:
            assert row["reason"] == "onnxruntime-gpu not installed" and row["latency_ms"] is None
    local = {(r["variant"], r["provider_request"]): r for r in rows if r["target"] == "local"}
    for row in remote:  # the same model and inputs: the device's quality matches this machine's
        if row["status"] == "ok":
            assert row["quality"]["cosine"] == pytest.approx(local[(row["variant"], "cpu")]["quality"]["cosine"],
                                                             abs=1e-4)
    doc = json.loads((run_dir / "report.json").read_text())
    assert len(doc["rows"]) == len(rows) == len(result["rows"])
    if "target" in doc["rows"][0]:
        assert sum(r["target"] == "dev" for r in doc["rows"]) == len(remote)
    env = _bench_doc(run_dir)["targets"]["dev"]
    assert env["machine"] and env["onnxruntime"] and env["available_providers"] and env["emulated"] is False


def _bench_doc(run_dir: Path) -> dict:
    (path,) = [p for p in run_dir.rglob("results.json") if p.parent.name.startswith("bench")]
    return json.loads(path.read_text())
