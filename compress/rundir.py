"""The run directory's own files: the manifest, the resolved recipe, the lock, and disk errors as messages.

Everything above the ground floor that reads or writes a run directory (runner, sweep, launch, report) goes
through these names, so that what a run directory holds is decided in one place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from compress.artifacts import write_text_atomic
from compress.errors import CompressError, LockedError

MANIFEST = "manifest.json"
RESOLVED_RECIPE = "recipe.resolved.yaml"


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is missing or unreadable (a run that never got that far)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_manifest(run_dir: Path) -> dict:
    return read_json(run_dir / MANIFEST)


def write_manifest(run_dir: Path, manifest: dict) -> None:
    write_text_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def lock(run_dir: Path, wait: bool = False) -> Iterator[None]:
    """One compress process per run directory: a second one refuses instead of interleaving (or, with `wait`,
    waits: writing the reports of a finished run waits for a run that started meanwhile)."""
    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        raise LockedError(f"{run_dir} is in use by another compress run; wait for it or use --out") from None
    try:
        handle.seek(0), handle.truncate(), handle.write(str(os.getpid())), handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def disk_errors(run_dir: Path) -> Iterator[None]:
    """Disk full, file too large (ulimit -f) and unwritable outputs as one-line messages, not tracebacks."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise CompressError(
                f"disk full while writing to {run_dir} ({exc.strerror}): free some space and run again "
                "(finished stages are kept)"
            ) from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR):
            raise CompressError(f"cannot write to {run_dir}: {exc.strerror} ({exc.filename})") from None
        raise
    except Exception as exc:
        # Some writers (onnx shape inference, in C++) ignore a full disk and leave a truncated file that fails
        # later as a parse error: with no space left, say so first.
        if not isinstance(exc, CompressError) and free_bytes(run_dir) < 1 << 20:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CompressError(f"disk full while writing to {run_dir} (less than 1 MiB free; the stage failed "
                                f"with {type(exc).__name__}: {first}): free some space and run again") from None
        raise


def free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 40
