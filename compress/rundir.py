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

from compress.artifacts import remove, write_text_atomic
from compress.errors import CompressError, InputError, LockedError

MANIFEST = "manifest.json"
RESOLVED_RECIPE = "recipe.resolved.yaml"
MARKER = ".compress-run"  # written first: the folder is compress's from then on, before anything in it is replaced
REPORT_FILES = ("report.json", "report.md", "report.html")  # what a failed or interrupted run must not leave behind


def is_run_dir(path: Path) -> bool:
    """A folder compress made: its marker, or (runs from before the marker) its manifest, resolved recipe or lock."""
    return any((path / name).is_file() for name in (MARKER, MANIFEST, RESOLVED_RECIPE, ".lock"))


def claim(run_dir: Path) -> None:
    """Make `run_dir` compress's before anything in it is written or replaced: a missing or empty folder is
    created and marked; a folder of someone else's files (no marker, no manifest) is refused with one sentence."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir} is a file, not a folder; give a folder for the run")
    if run_dir.is_dir() and not is_run_dir(run_dir):
        try:
            used = any(True for _ in run_dir.iterdir())
        except OSError as exc:
            raise InputError(f"--out {run_dir}: cannot list the folder ({exc.strerror})") from None
        if used:
            raise InputError(f"--out {run_dir} holds files compress did not write (no {MANIFEST}); choose an empty "
                             "or new folder so that none of them is replaced")
    with disk_errors(run_dir):  # an unwritable --out fails here: a message, not a traceback
        run_dir.mkdir(parents=True, exist_ok=True)
        if not is_run_dir(run_dir):  # new or empty: mark it (a folder already ours is left as it is)
            write_text_atomic(run_dir / MARKER, "compress run directory: compress may replace what it wrote here\n")


def invalidate_reports(run_dir: Path) -> list[str]:
    """Remove the reports of an earlier run before its stages run again, so that a run that fails or is stopped
    leaves no report older than its manifest for `compress gate` to pass; returns the names removed."""
    removed = []
    for name in REPORT_FILES:
        path = Path(run_dir) / name
        if path.is_file() and not path.is_symlink():
            remove(path)
            removed.append(name)
    return removed


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


def verify_artifacts(run_dir: Path, manifest: dict, formats: tuple[str, ...] = ("bench", "json")) -> None:
    """Refuse to render from results edited or replaced since the run recorded them: each artifact of `formats`
    must hash to the sha256 in the manifest (one sentence naming it otherwise)."""
    from compress.artifacts import Artifact, sha256_path

    for data in (manifest.get("artifacts") or {}).values():
        if not isinstance(data, dict) or data.get("format") not in formats or not data.get("sha256"):
            continue
        artifact = Artifact.from_json(data, Path(run_dir))
        if artifact.path.is_symlink():
            raise InputError(f"{artifact.path} is a symbolic link, not the artifact compress wrote; run the recipe "
                             "again")
        if not artifact.path.exists():
            raise InputError(f"{artifact.path} is missing (the manifest lists it); run the recipe again")
        if sha256_path(artifact.path) != artifact.sha256:
            raise InputError(f"{artifact.path} changed since the run wrote it (its sha256 differs from "
                             f"{MANIFEST}); refusing to report edited results: run the recipe again")
