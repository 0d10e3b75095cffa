"""The package's structure stays what docs/architecture.md says: layers, public names only, small files."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compress"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path, modules: set[str]) -> list[str]:
    """`from compress.x import _y`, and `alias._y` where alias is a compress module, in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("compress"):
            for name in node.names:
                if f"{node.module}.{name.name}" in modules:  # a submodule imported by name
                    aliases[name.asname or name.name] = f"{node.module}.{name.name}"
                elif _private(name.name):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {name.name}")
        elif isinstance(node, ast.Import):
            for name in node.names:
                if name.name.startswith("compress") and name.asname:
                    aliases[name.asname] = name.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and _private(node.attr)):
            found.append(f"{path.name}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_architecture_no_module_imports_a_private_name_of_another():
    modules = _modules()
    found = [use for path in modules.values() for use in private_uses(path, set(modules))]
    assert found == []


@pytest.mark.parametrize("source, expected", [
    ("from compress.runner import _lock\n", 1),
    ("from compress.stages import bench as B\nB._row(1)\n", 1),
    ("import compress.stages.bench as B\nB._cells()\n", 1),
    ("from compress import __version__\nfrom compress.runner import run\n", 0),
    ("from compress.stages import bench\nbench.row(1)\n", 0),
])
def test_architecture_private_checker_finds_what_it_should(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert len(private_uses(path, {"compress.runner", "compress.stages.bench"})) == expected


def test_architecture_files_stay_under_the_limit_unless_documented():
    documented = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    long = [f"{path.relative_to(ROOT)}: {n} lines" for path in _modules().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
            and str(path.relative_to(ROOT)) not in documented]
    assert long == []


def test_architecture_compress_never_imports_bench_or_tests():
    pattern = re.compile(r"^\s*(from|import)\s+(bench|tests)\b", re.MULTILINE)
    found = [str(p.relative_to(ROOT)) for p in _modules().values() if pattern.search(p.read_text(encoding="utf-8"))]
    assert found == []


def test_architecture_layers_hold_as_lint_imports_checks_them():
    tool = Path(sys.executable).parent / "lint-imports"
    command = [str(tool)] if tool.exists() else [shutil.which("lint-imports") or "lint-imports"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
