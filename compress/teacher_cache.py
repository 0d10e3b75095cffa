"""Teacher outputs cached once per text set, shared by every recipe, variant and sweep on the machine.

The teacher is the slow part of distillation (all-mpnet-base-v2: ~27 ms per text on 2 cores, minutes for a
training set), and its outputs depend only on the teacher's weights, the task, the texts and the token
budget. So they are stored content-addressed: `<cache dir>/teacher-outputs/<key>.npy` with
key = sha256(teacher sha256, task, max_length, sha256 of the texts). Another recipe (or sweep variant) with
the same teacher and texts reads them instead of recomputing them, whatever its other settings. Files are
written under a temporary name and renamed (atomic); a corrupt file is recomputed.

The cache dir is $COMPRESS_CACHE_DIR, else $XDG_CACHE_HOME/compress, else ~/.cache/compress. It holds at most
$COMPRESS_CACHE_MAX_MB megabytes (default 2048): after a write, the least recently used output files (reading one
refreshes it) are removed until it fits; only files named as this module names them, never the one just written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from compress.artifacts import atomic_path

DEFAULT_MAX_MB = 2048
_OURS = re.compile(r"[0-9a-f]{32}\.npy")  # the names path_for writes: nothing else in the folder is touched


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
    if len(values) != rows:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: the last to be evicted
    return values


def save(cache_key: str, values: np.ndarray, root: Path | None = None) -> Path:
    path = path_for(cache_key, root)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(values, dtype=np.float32), allow_pickle=False)
    evict(path.parent, max_bytes(), keep=path)
    return path


def max_bytes() -> int:
    raw = os.environ.get("COMPRESS_CACHE_MAX_MB", "")
    try:
        megabytes = float(raw) if raw.strip() else DEFAULT_MAX_MB
    except ValueError:
        megabytes = DEFAULT_MAX_MB
    return int(max(megabytes, 0) * 1024 * 1024)


def evict(folder: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used cache files until the folder's files total at most `limit` bytes; returns
    what was removed. A file that vanished or cannot be touched is skipped: the cache is an optimisation, never
    an error."""
    files = []
    for item in folder.iterdir() if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            if _OURS.fullmatch(item.name) and item.is_file():
                info = item.stat()
                files.append((info.st_mtime, info.st_size, item))
    total, removed = sum(size for _, size, _ in files), []
    for _, size, item in sorted(files, key=lambda f: f[0]):
        if total <= limit:
            break
        if keep is not None and item == keep:
            continue
        with contextlib.suppress(OSError):
            item.unlink()
            removed.append(item)
        total -= size
    return removed

