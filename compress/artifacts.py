"""Named artifacts in a run directory, written atomically and identified by content hash.

An artifact is a file or a directory under `<run dir>/artifacts/<name>`. It is created under a
temporary name next to its final place and renamed when complete, so a killed run never leaves a
half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compress.errors import CompressError, InputError

# Temporaries compress makes start with this: cleaning a folder removes these and nothing else (never a user's .tmp-*).
TMP_PREFIX = ".compress-tmp-"


@dataclass(frozen=True)
class Artifact:
    """A named output of a stage. `path` is absolute; `format` says what reads it."""

    name: str
    path: Path
    format: str  # hf-model | onnx | dataset | bench | json
    sha256: str
    metadata: dict = field(default_factory=dict)

    def to_json(self, run_dir: Path) -> dict:
        data = asdict(self)
        data["path"] = _relative_or_absolute(self.path, run_dir)
        return data

    @classmethod
    def from_json(cls, data: dict, run_dir: Path) -> Artifact:
        path = Path(data["path"])
        return cls(
            name=data["name"],
            path=path if path.is_absolute() else run_dir / path,
            format=data["format"],
            sha256=data["sha256"],
            metadata=data.get("metadata", {}),
        )


def _relative_or_absolute(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def check_name(name: str) -> str:
    """Refuse names that could escape the artifacts directory or hide as temp files."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise CompressError(f"invalid artifact name {name!r}: use letters, digits, '.', '-' and '_' only")
    return name


def sha256_path(path: Path) -> str:
    """Hash a file, or a directory as the sorted list of (relative name, file hash)."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(bytes.fromhex(sha256_path(file)))
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def check_target(final: Path) -> None:
    """Refuse to replace what compress cannot have written there: a symbolic link, a device, a fifo."""
    if final.is_symlink():
        raise InputError(f"{final} is a symbolic link, not a file compress wrote; remove it (or choose another "
                         "path) and run again")
    if final.exists() and not (final.is_file() or final.is_dir()):
        raise InputError(f"{final} exists and is not a regular file or folder; choose another path")


# An ONNX bundle keeps its graph where the clients people deploy with look without arguments: onnx/model.onnx
# (transformers.js only looks there; sentence-transformers and Optimum look at the root, then there). Its external
# data files (model.onnx.data, model.onnx_data) go beside it.
MODEL_DIR = "onnx"
MODEL_NAME = "model.onnx"
# A root model.onnx (and data) link to it keeps readers of the old layout working (the quantize stage and
# sensitivity read <bundle>/model.onnx); drop it once they all ask model_file().
ROOT_LINKS = True


def model_file(bundle: Path) -> Path:
    """The graph of an ONNX bundle: onnx/model.onnx, else model.onnx at its root (run dirs before the onnx/ layout)."""
    bundle = Path(bundle)
    inside = bundle / MODEL_DIR / MODEL_NAME
    return inside if inside.is_file() else bundle / MODEL_NAME


def model_files(bundle: Path) -> list[Path]:
    """The graph and its external data files, real files only (never the root links)."""
    model = model_file(bundle)
    return sorted(p for p in model.parent.glob(f"{MODEL_NAME}*") if p.is_file() and not p.is_symlink())


def arrange_bundle(folder: Path) -> bool:
    """Move a bundle's root model.onnx (and its data files) into onnx/, with root links when ROOT_LINKS; True when
    it moved something. A bundle already in that layout is left as it is."""
    folder = Path(folder)
    found = [p for p in folder.glob(f"{MODEL_NAME}*") if p.is_file() and not p.is_symlink()]
    if not found:
        return False
    (folder / MODEL_DIR).mkdir(exist_ok=True)
    for path in found:
        os.replace(path, folder / MODEL_DIR / path.name)
        if ROOT_LINKS:
            os.symlink(f"{MODEL_DIR}/{path.name}", path)
    return True


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; rename it into place only on success.

    The caller writes a file or a directory at the yielded path. On any exception (including
    KeyboardInterrupt) the temporary is removed and `final` is untouched. A folder is only ever replaced by a
    folder (an artifact made again): a file never replaces a folder, and symbolic links and devices are refused.
    """
    check_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{final.name}"
    try:
        yield tmp
        if not tmp.exists():
            raise CompressError(f"internal error: nothing was written for {final.name}")
        _fsync_tree(tmp)
        check_target(final)
        if final.is_dir():
            if not tmp.is_dir():
                raise InputError(f"{final} is a folder; compress writes a file there only in place of a file it "
                                 "wrote: choose a file path")
            shutil.rmtree(final)
        elif final.exists() and tmp.is_dir():
            raise InputError(f"{final} is a file, not a folder; choose another path")
        os.replace(tmp, final)
    except BaseException:
        remove(tmp)
        raise


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_output(final: Path, option: str, ours=None, force: bool = False, append: bool = False) -> None:
    """Refuse a file path the user named (schema --out, gate --comment/--summary) that compress must not write to: a
    folder, a link or a device, and (when `ours` is given) an existing file that `ours(its text)`
    does not recognise as compress's, unless `force`. A file to `append` to is only refused when it is a folder."""
    final = Path(final)
    if final.is_dir():
        raise InputError(f"{option} {final} is a folder; give a file path")
    if append:  # appending changes nothing already there: /dev/stdout and links to files are fine
        return
    check_target(final)
    if ours is not None and final.is_file() and not force:
        try:
            existing = final.read_text(encoding="utf-8", errors="replace")
        except OSError:
            existing = ""
        if not ours(existing):
            raise InputError(f"{option} {final} exists and compress did not write it; choose another path, or add "
                             "--force to replace it")


def write_output(final: Path, text: str, ours, force: bool = False, option: str = "--out") -> None:
    """Write a file the user named, after check_output: an existing file only when compress wrote it (or --force)."""
    check_output(final, option, ours, force)
    write_text_atomic(Path(final), text)


def append_output(final: Path, text: str, option: str) -> None:
    """Append to a file the user named ($GITHUB_STEP_SUMMARY, $GITHUB_OUTPUT): a folder there is one sentence."""
    final = Path(final)
    if final.is_dir():
        raise InputError(f"{option} {final} is a folder; give a file path")
    try:
        with open(final, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise InputError(f"{option} {final}: cannot append ({exc.strerror})") from None


def remove(path: Path, within: Path | None = None) -> None:
    """Delete `path`: a file, a folder with what it holds, or a link itself, never what a link points at (rmtree
    does not follow links inside). `within`: a folder compress made that holds `path`; when it, or a folder
    between it and `path`, is a link, nothing is deleted (InputError): the path would reach outside it."""
    path = Path(path)
    if within is not None:
        link = linked_folder(path, Path(within))
        if link is not None:
            raise InputError(f"{link} is a symbolic link; compress deletes nothing through a link: remove the link "
                             "and run again")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def check_not_linked(path: Path, run_dir: Path) -> None:
    """Refuse `path` (a folder compress makes and cleans under `run_dir`) when it, or a folder between `run_dir`
    and it, is a symbolic link: one sentence, nothing written or deleted through the link."""
    for current in [path, *Path(path).parents]:
        if current == Path(run_dir):
            return
        if current.is_symlink():
            raise InputError(f"{current} is a symbolic link inside the run directory; compress writes and deletes "
                             "there and never through a link: remove the link (or choose a new --out) and run "
                             "again")


def linked_folder(path: Path, within: Path) -> Path | None:
    """The first symbolic link among `within` and the folders between it and `path` (`path` itself excluded), or
    None; `path` outside `within` counts as its own answer."""
    try:
        parts = Path(path).relative_to(within).parts
    except ValueError:
        return Path(path)
    if ".." in parts:
        return Path(path)
    current = Path(within)
    for part in ("", *parts[:-1]):
        current = current / part if part else current
        if current.is_symlink():
            return current
    return None


def clean_temporaries(directory: Path) -> int:
    """Remove what an interrupted run left under compress's temporary names (TMP_PREFIX); return how many."""
    if not directory.is_dir():
        return 0
    leftovers = [p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in leftovers:
        remove(path)
    return len(leftovers)
