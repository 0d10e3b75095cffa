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


MARKER_TEXT = "compress run directory: compress may replace what it wrote here\n"


def is_run_dir(path: Path) -> bool:
    """A folder compress made: its marker with the text compress writes there, or (a run from before the marker)
    a manifest that is provably compress's beside the resolved recipe. A manifest.json, .lock or
    recipe.resolved.yaml alone proves nothing: any tool may leave files of those names."""
    marker = path / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            return marker.read_text(encoding="utf-8", errors="replace") == MARKER_TEXT
        except OSError:
            return False
    return _old_run_dir(path)


def _old_run_dir(path: Path) -> bool:
    """A run directory written before the marker existed: a manifest with compress's own keys (its version, the
    recipe and its 64-hex-digit hash) and the resolved recipe the runner writes first."""
    manifest = path / MANIFEST
    if not manifest.is_file() or manifest.is_symlink() or not (path / RESOLVED_RECIPE).is_file():
        return False
    data = read_json(manifest)
    sha = data.get("recipe_sha256") if isinstance(data, dict) else None
    return (isinstance(data, dict) and isinstance(data.get("compress_version"), str)
            and isinstance(data.get("recipe"), dict) and isinstance(sha, str) and len(sha) == 64
            and all(c in "0123456789abcdef" for c in sha)
            and (isinstance(data.get("stages"), dict) or isinstance(data.get("sweep"), dict)))


def claim(run_dir: Path, option: str = "--out") -> None:
    """Make `run_dir` compress's before anything in it is written or replaced: a missing or empty folder is
    created and marked; a folder without compress's marker (someone else's files, a manifest.json of another
    tool) is refused with one sentence, nothing in it touched. `option` names the folder in that sentence."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{option} {run_dir} is a file, not a folder; give a folder for the run")
    if run_dir.is_dir() and not is_run_dir(run_dir):
        try:
            used = any(True for _ in run_dir.iterdir())
        except OSError as exc:
            raise InputError(f"{option} {run_dir}: cannot list the folder ({exc.strerror})") from None
        if used:
            raise InputError(f"{option} {run_dir} holds files compress did not write (no {MARKER} written by "
                             "compress); choose an empty or new folder so that none of them is replaced (a run "
                             "directory of an older compress: run the recipe again into a new folder)")
    if run_dir.is_dir():
        check_own_folders(run_dir)
    with disk_errors(run_dir):  # an unwritable --out fails here: a message, not a traceback
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = run_dir / MARKER
        if not (marker.is_file() and marker.read_text(encoding="utf-8", errors="replace") == MARKER_TEXT):
            # new, empty, or a run of an older compress proven by its manifest: marked from now on
            write_text_atomic(marker, MARKER_TEXT)


OWN_FOLDERS = ("artifacts", "work", "model_cards", "variants")


def check_own_folders(run_dir: Path) -> None:
    """Refuse a run directory whose folders compress writes and cleans (artifacts/, work/ and the stages' work
    folders, model_cards/, variants/) are symbolic links: compress would write, and delete, through them."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in OWN_FOLDERS]
    work = run_dir / "work"
    if work.is_dir() and not work.is_symlink():
        with contextlib.suppress(OSError):
            found += sorted(work.iterdir())
    for path in found:
        if path.is_symlink():
            raise InputError(f"{path} is a symbolic link inside the run directory; compress writes and deletes "
                             "there and never through a link: remove the link (or choose a new --out) and run "
                             "again")


def check_apart(run_dir: Path, sources: dict[str, Path]) -> None:
    """Refuse an input (`sources`: what it is -> its local path) inside the run directory, where the run would
    replace or change it, and a run directory inside an input folder, whose hash would then include the run's own
    outputs (nothing ever cached, a data folder of classes gaining one). Refused rather than left out of the hash:
    the input would still be read (and listed) with the run's outputs in it."""
    run = Path(run_dir).resolve()
    for what, path in sources.items():
        source = Path(path).resolve()
        if source.is_relative_to(run):
            raise InputError(f"{what} {path} is inside the run directory {run_dir}, which the run writes and "
                             "replaces; copy it out of the run directory (or choose another --out) and run again")
        if source.is_dir() and run.is_relative_to(source):
            raise InputError(f"the run directory {run_dir} is inside the {what} folder {path}: its hash would "
                             "include the run's own outputs (nothing would ever be cached); choose an --out "
                             "outside it")


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
