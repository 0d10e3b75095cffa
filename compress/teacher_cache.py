"""Teacher outputs cached once per text set, shared by every recipe, variant and sweep on the machine.

The teacher is the slow part of distillation (all-mpnet-base-v2: ~27 ms per text on 2 cores, minutes for a
training set), and its outputs depend only on the teacher's weights, the task, the texts and the token
budget. So they are stored content-addressed: `<cache dir>/teacher-outputs/<key>.npy` with
key = sha256(teacher sha256, task, max_length, sha256 of the texts). Another recipe (or sweep variant) with
the same teacher and texts reads them instead of recomputing them, whatever its other settings. Files are
written under a temporary name and renamed (atomic); a corrupt file is recomputed.

The cache dir is $COMPRESS_CACHE_DIR, else $XDG_CACHE_HOME/compress, else ~/.cache/compress.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from compress.artifacts import atomic_path


def cache_dir() -> Path:
    root = os.environ.get("COMPRESS_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress"


def texts_hash(examples) -> str:
    """sha256 of the examples in order (texts; other examples by their bytes)."""
    digest = hashlib.sha256()
    for item in examples:
        data = item.encode("utf-8") if isinstance(item, str) else np.asarray(item).tobytes()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def key(teacher_sha256: str, task: str, max_length: int, examples) -> str:
    payload = {"teacher": teacher_sha256, "task": task, "max_length": max_length, "texts": texts_hash(examples),
               "count": len(examples), "format": 1}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def path_for(cache_key: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "teacher-outputs" / f"{cache_key[:32]}.npy"


def load(cache_key: str, rows: int, root: Path | None = None) -> np.ndarray | None:
    """The cached outputs, or None when absent or unreadable (then they are recomputed)."""
    path = path_for(cache_key, root)
    if not path.is_file():
        return None
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return values if len(values) == rows else None


def save(cache_key: str, values: np.ndarray, root: Path | None = None) -> Path:
    path = path_for(cache_key, root)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(values, dtype=np.float32), allow_pickle=False)
    return path
