"""Torch models from Python factories: the `python:` source, and the model folder that holds such a model.

`python:package.module:function` or `python:path/to/file.py:function` (a path relative to the working
directory, like data sources) names a function that takes no arguments and returns a torch.nn.Module. compress
keeps such a model as a folder, the hf-model artifact of the tasks whose models are not transformers
(image-classification):

    compress_model.json   {"factory": "python:factory.py:<function>" or "python:<module>:<function>",
                           "source": <the recipe's source>, "labels": [class names] (optional)}
    factory.py            a copy of the factory's file, so that the folder stands alone
    model.safetensors     the weights; a pickle state dict (model.pt, .pth or .bin) is read only when the
                          recipe sets allow_pickle (the runner checks), and then with torch.load(weights_only=True)

A `python:` teacher is built into the run's artifacts/teacher with seed 0, so that a teacher initialised at
random hashes the same on every run and cached stages stay valid. A local folder of this layout is a checkpoint.
Loading a folder runs its factory.py: a folder that did not come from this recipe needs trust_remote_code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import shutil
import sys
from pathlib import Path

from compress.errors import SourceError

PREFIX = "python:"
SPEC_FILE = "compress_model.json"
CODE_FILE = "factory.py"
WEIGHTS_FILE = "model.safetensors"
PICKLE_WEIGHTS = ("model.pt", "model.pth", "pytorch_model.bin")


def parse(source: str) -> tuple[str, str]:
    """`python:<target>:<function>` -> (target, function); the target is a module name or a .py file."""
    target, sep, function = source[len(PREFIX):].rpartition(":")
    if not source.startswith(PREFIX) or not sep or not target or not function.isidentifier():
        raise SourceError(f"{source!r}: expected python:<module>:<function> or python:<file.py>:<function>")
    return target, function


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def build(source: str, base: Path | None = None):
    """Call the factory named by `source` (a file target relative to `base`, default the working directory)."""
    import torch

    function = _function(source, base)
    try:
        model = function()
    except Exception as exc:  # the user's code: any error, said in one line with the source
        raise SourceError(f"{source!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"{source!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _function(source: str, base: Path | None):
    target, name = parse(source)
    if _is_file(target):
        path = (base or Path.cwd()) / Path(target).expanduser()
        if not path.is_file():
            raise SourceError(f"{source!r}: no such file {path}")
        module = _import_file(path, source)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise SourceError(f"{source!r}: cannot import module {target!r} ({exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise SourceError(f"{source!r}: {target} has no function {name!r}")
    return function


def _import_file(path: Path, source: str):
    """Import a .py file under a name of its own content, so that two factories never share a module."""
    import importlib.util

    code = path.read_bytes()
    name = f"compress_factory_{hashlib.sha256(code).hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look classes up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise SourceError(f"{source!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def resolve(source: str, dest: Path, trust_remote_code: bool = False, revision: str | None = None) -> Path:
    """A model source as a folder: a `python:` factory built into `dest` (seed 0); anything else as
    compress.sources.resolve_model finds it, refusing a model folder whose factory.py is not trusted."""
    if source.startswith(PREFIX):
        return materialize(source, dest)
    from compress.sources import resolve_model

    path = resolve_model(source, revision)
    if (path / CODE_FILE).is_file() and (path / SPEC_FILE).is_file() and not trust_remote_code:
        raise SourceError(f"{path}: loading this model runs its {CODE_FILE}; compress does not run it unless the "
                          "recipe sets trust_remote_code: true (or give the factory as python:<file.py>:<function>)")
    return path


def materialize(source: str, dest: Path, seed: int = 0) -> Path:
    """Build the factory's model with `seed` and write it as a model folder at `dest`, atomically. An unchanged
    folder is left as it is: cached stages, and other processes of a distributed stage, read it."""
    import tempfile

    import torch

    from compress.artifacts import TMP_PREFIX, atomic_path, sha256_path

    target, function = parse(source)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is not ours to change
        torch.manual_seed(seed)
        model = build(source)
    spec = {"factory": source, "source": source}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=dest.parent) as scratch:
        built = Path(scratch) / dest.name
        built.mkdir()
        if _is_file(target):
            shutil.copy2(Path.cwd() / Path(target).expanduser(), built / CODE_FILE)
            spec["factory"] = f"{PREFIX}{CODE_FILE}:{function}"
        _write_spec(built, spec)
        _save_weights(model, built)
        if not (dest.is_dir() and sha256_path(dest) == sha256_path(built)):
            with atomic_path(dest) as tmp:
                shutil.copytree(built, tmp)
    return dest


def read_spec(folder: Path) -> dict:
    path = Path(folder) / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{folder}: not a model folder of a Python factory (no {SPEC_FILE}); give the model "
                          "as python:<module or file.py>:<function>, or a folder compress wrote") from None
    except ValueError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or not str(spec.get("factory", "")).startswith(PREFIX):
        raise SourceError(f"{path}: expected {{\"factory\": \"python:<module or file.py>:<function>\"}}")
    return spec


def load(folder: Path):
    """The model of a model folder: its factory's module with the saved weights, in eval mode."""
    import torch

    folder = Path(folder)
    spec = read_spec(folder)
    pickled = next((folder / n for n in PICKLE_WEIGHTS if (folder / n).is_file()), None)
    if not (folder / WEIGHTS_FILE).is_file() and pickled is None:
        raise SourceError(f"{folder}: no weights ({WEIGHTS_FILE}, or a state dict in {', '.join(PICKLE_WEIGHTS)})")
    model = build(spec["factory"], base=folder)
    try:
        if (folder / WEIGHTS_FILE).is_file():
            from safetensors.torch import load_model

            load_model(model, str(folder / WEIGHTS_FILE), strict=True)
        else:  # allowed by the runner's check (allow_pickle) before any stage; never a full unpickle
            model.load_state_dict(torch.load(pickled, map_location="cpu", weights_only=True), strict=True)
    except (RuntimeError, KeyError) as exc:  # keys or shapes that do not fit the factory's model
        first = str(exc).strip().splitlines()[0][:300]
        raise SourceError(f"{folder}: the weights do not fit the model of {spec['factory']} ({first})") from None
    except pickle.UnpicklingError:
        raise SourceError(f"{folder}: torch.load(weights_only=True) refuses this pickle (it would run code); "
                          f"save a plain state dict, better as {WEIGHTS_FILE}") from None
    model.compress_labels = spec.get("labels")
    return model.eval()


def save(model, source_dir: Path, tmp: Path) -> None:
    """Write `model` as a model folder at `tmp` (created): the factory of `source_dir`, the model's weights and
    its class names (`model.compress_labels`)."""
    spec = read_spec(source_dir)
    tmp.mkdir(exist_ok=True)
    if (Path(source_dir) / CODE_FILE).is_file():
        shutil.copy2(Path(source_dir) / CODE_FILE, tmp / CODE_FILE)
    labels = getattr(model, "compress_labels", None)
    _write_spec(tmp, {**spec, **({"labels": list(labels)} if labels else {})})
    _save_weights(model, tmp)


def _write_spec(folder: Path, spec: dict) -> None:
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_weights(model, folder: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(folder / WEIGHTS_FILE))  # save_model, not save_file: it handles tied weights
