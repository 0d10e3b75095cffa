"""The recipe's local paths checked before anything runs: the teacher and the data exist and are what the recipe
says (a model folder or a .gguf file; a data file or folder, with the columns text_field and label_field name),
each problem one line with file:line (exit 2).

Used by `compress validate` and by the runner before any stage. Ground floor: imports only sources and errors, and
reads the recipe file's YAML itself for the lines (the recipe has been validated by then)."""

from __future__ import annotations

from pathlib import Path

from compress.errors import RecipeError, SourceError
from compress.sources import HF_DATASET_PREFIX, PACKAGE_PREFIX, is_saved_dataset, looks_like_hub_id

MODEL_FILES = ("config.json", "compress_model.json")
DATA_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json", ".parquet", ".npz")


def check_paths(recipe, recipe_file: str | Path | None = None) -> None:
    """Raise one RecipeError listing every local path of `recipe` that is missing or not what the recipe says."""
    problems = []
    if (message := teacher_problem(recipe.teacher.source)) is not None:
        problems.append((("teacher", "source"), message))
    else:
        problems += length_problems(recipe)
    if (message := data_problem(recipe.data.source, recipe.task)) is not None:
        problems.append((("data", "source"), message))
    else:
        problems += field_problems(recipe.data.source, _fields(recipe), ("data",))
    extra = recipe.data.unlabeled
    if extra and (message := data_problem(extra.source, recipe.task)) is not None:
        problems.append((("data", "unlabeled", "source"), message))
    elif extra:
        problems += field_problems(extra.source, {"text_field": extra.text_field}, ("data", "unlabeled"))
    if problems:
        lines = _lines(recipe_file)
        raise RecipeError("\n".join(f"{_where(recipe_file, lines, key)}: {'.'.join(key)}: {message}"
                                    for key, message in problems))


# Position ids of these models start after the padding id: pad_token_id + 1 positions are never a token's.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text")


def max_positions(model_dir: Path) -> int | None:
    """The most tokens one input of the model in `model_dir` can hold, from its config.json; None when it does not
    say (another kind of model)."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    limit = next((config[k] for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                  if isinstance(config.get(k), int) and config[k] > 0), None)
    if limit and config.get("model_type") in OFFSET_POSITIONS:
        limit -= int(config.get("pad_token_id") or 0) + 1
    return limit


def length_problems(recipe) -> list:
    """Token lengths the teacher cannot take (a bench stage's seq_lens, data.max_length beyond its positions): a
    traceback inside a report cell otherwise. The student and the exports have the teacher's positions."""
    path = _local(recipe.teacher.source)
    limit = max_positions(path) if isinstance(path, Path) and path.is_dir() else None
    if not limit:
        return []
    problems = []
    if recipe.data.max_length > limit and "max_length" in recipe.data.model_fields_set:
        problems.append((("data", "max_length"), f"{recipe.data.max_length} tokens is more than the teacher's "
                         f"{limit} positions; use at most {limit}"))
    for index, stage in enumerate(recipe.stages):
        if getattr(stage, "kind", None) != "bench":
            continue
        extra = (max([stage.new_tokens, *stage.generation.new_tokens]) if recipe.task == "causal-lm" else 0)
        long = [n for n in stage.seq_lens if isinstance(n, int) and n + extra > limit]
        if long:
            what = f"{long[0]} prompt tokens + new_tokens {extra}" if extra else f"{long[0]} tokens"
            problems.append((("stages", str(index), "seq_lens"), f"{what} is more than the teacher's {limit} "
                             f"positions (its config.json); use at most {limit - extra}"))
    return problems


def _fields(recipe) -> dict:
    data = recipe.data
    if recipe.task == "image-classification":
        return {}
    return {"text_field": data.text_field} | ({"label_field": data.label_field} if data.label_field else {})


def field_problems(source: str, fields: dict, key: tuple) -> list:
    """A column named by `fields` ({"text_field": "text"}) that a local data file lacks; unknown (a folder, a
    parquet file, a source elsewhere): nothing to say here, the run says it when it reads the data."""
    path = _local(source)
    head = read_head(path) if isinstance(path, Path) and path.is_file() else None
    if head is None:
        return []
    return [((*key, name), f"{value!r} is not a column of {path.name} (its columns: {shown_columns(head[0])})")
            for name, value in fields.items() if value not in head[0]]


def shown_columns(columns: list[str], most: int = 12, width: int = 40) -> str:
    """Column names for a message: at most `most`, each escaped (no control bytes) and at most `width` long."""
    def one(name: str) -> str:
        text = name if name.isprintable() else repr(name)[1:-1]
        return text if len(text) <= width else text[: width - 3] + "..."

    more = f", ... ({len(columns) - most} more)" if len(columns) > most else ""
    return ", ".join(one(c) for c in columns[:most]) + more


def read_head(path: Path, rows: int = 0) -> tuple[list[str], list[dict]] | None:
    """The column names of a .csv, .tsv, .jsonl or .txt file (optionally .gz, .bz2 or .xz) and its first `rows`
    rows, read with the standard library as pandas reads them (an empty header cell is "Unnamed: <i>", a .txt
    file's one column is "text"); None for another kind of file or one that cannot be read."""
    import csv
    import itertools
    import json

    suffixes = [s.lower() for s in path.suffixes]
    kind = next((s for s in reversed(suffixes) if s in (".txt", ".csv", ".tsv", ".jsonl", ".json")), None)
    if kind is None:
        return None
    try:
        with _open_text(path, suffixes[-1]) as handle:
            if kind == ".txt":
                return ["text"], [{"text": line.rstrip("\n")} for line in itertools.islice(handle, rows)]
            if kind in (".jsonl", ".json"):
                found = [json.loads(line) for line in itertools.islice(handle, max(rows, 1)) if line.strip()]
                found = [row for row in found if isinstance(row, dict)]
                return (list(dict.fromkeys(k for row in found for k in row)), found[:rows]) if found else None
            reader = csv.reader(handle, delimiter="\t" if kind == ".tsv" else ",")
            header = [name or f"Unnamed: {i}" for i, name in enumerate(next(reader, []))]
            return header, [dict(zip(header, row)) for row in itertools.islice(reader, rows)]
    except (OSError, EOFError, ValueError, UnicodeError, csv.Error):
        return None


def _open_bytes(path: Path, suffix: str):
    import bz2
    import gzip
    import lzma

    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)(path, "rb")


def _open_text(path: Path, suffix: str):
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
    return opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="")


ONNX_FILES = ("model.onnx", "onnx/model.onnx")  # an ONNX model folder (tasks/onnx_input.py finds the same)


def teacher_problem(source: str) -> str | None:
    if source.startswith("python:"):
        return None
    path = _local(source)
    if isinstance(path, str):
        return path
    if path is None:
        if _looks_local(source):
            return f"{source!r} does not exist (a model folder, a .gguf file, or a Hugging Face hub id)"
        return None  # a hub id
    if path.is_file():
        # What the file holds is checked when it is read (compress/tasks/onnx_input.py): one sentence there too.
        return None if path.suffix.lower() in (".gguf", ".onnx") else (
            f"{source!r} is a file; the teacher is a model folder (with config.json), an .onnx or a .gguf file")
    if not path.is_dir():
        return f"{source!r} is not a file or folder"
    if not any((path / name).is_file() for name in (*MODEL_FILES, *ONNX_FILES)):
        return f"{source!r} is a folder without config.json or model.onnx: not a model folder"
    return None


def data_problem(source: str, task: str) -> str | None:
    if source.startswith((HF_DATASET_PREFIX, "sklearn:")):
        return None
    path = _local(source)
    if isinstance(path, str):
        return path
    if path is None:
        hint = f" (a hub dataset is written hf:{source})" if looks_like_hub_id(source) else ""
        return f"{source!r} does not exist{hint}"
    if path.is_dir():
        if is_saved_dataset(path) or task == "image-classification":
            return None
        return (f"{source!r} is a folder, but not one written by datasets' save_to_disk; point at a data file "
                f"({', '.join(DATA_SUFFIXES[:5])}, .parquet)")
    if not path.is_file():
        return f"{source!r} is not a file or folder"
    if path.stat().st_size == 0:
        return f"{source!r} is an empty file"
    return encoding_problem(path, source)


TEXT_KINDS = (".txt", ".csv", ".tsv", ".jsonl", ".json")


def encoding_problem(path: Path, source: str) -> str | None:
    """A text data file (.csv, .tsv, .txt, .jsonl) that is not UTF-8 text, from its first 64 KB: UTF-16 (a
    spreadsheet's "Unicode text" export), binary data, or another encoding. One sentence, no raw bytes."""
    import codecs

    suffixes = [s.lower() for s in path.suffixes]
    if not any(s in TEXT_KINDS for s in suffixes):
        return None
    try:
        with _open_bytes(path, suffixes[-1]) as handle:
            start = handle.read(65536)
    except (OSError, EOFError, ValueError):
        return f"{source!r} cannot be read as a {suffixes[-1]} file (damaged or not that kind of compression)"
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return (f"{source!r} is UTF-16 text (a spreadsheet's \"Unicode text\" export, say); save it as UTF-8 "
                "(CSV UTF-8) and point at that file")
    if b"\0" in start:
        return (f"{source!r} holds binary data (NUL bytes), not UTF-8 text; is it the right file? (UTF-16 text must "
                "be saved as UTF-8)")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
    except UnicodeDecodeError as exc:
        return (f"{source!r} is not UTF-8 text (byte 0x{start[exc.start]:02x} at offset {exc.start}); save it "
                "as UTF-8 and point at that file")
    return None


def local_path(source: str) -> Path | None:
    """The local file or folder `source` names (a path or package:<pkg>/<path>), or None."""
    path = _local(source)
    return path if isinstance(path, Path) else None


def _local(source: str) -> Path | None | str:
    """The existing local path, None when nothing is there, or a message (a package: source that fails)."""
    if source.startswith(PACKAGE_PREFIX):
        from compress.sources import package_path

        try:
            return package_path(source)
        except SourceError as exc:
            return str(exc)
    path = Path(source).expanduser()
    return path if path.exists() or path.is_symlink() else None


def _looks_local(source: str) -> bool:
    return not looks_like_hub_id(source) or source.startswith(("/", ".", "~")) or Path(source).suffix != ""


def _lines(recipe_file) -> dict:
    """(key, subkey[, leaf]) -> line number, from the recipe file's YAML (empty when there is no file or it moved)."""
    import yaml

    if not recipe_file:
        return {}
    try:
        root = yaml.compose(Path(recipe_file).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    found = {}
    for key, value in getattr(root, "value", []) if isinstance(root, yaml.MappingNode) else []:
        found[(key.value,)] = key.start_mark.line + 1
        if isinstance(value, yaml.SequenceNode):  # stages: (stages, "2", kind) keys
            for index, item in enumerate(value.value):
                found[(key.value, str(index))] = item.start_mark.line + 1
                for leaf, _ in item.value if isinstance(item, yaml.MappingNode) else []:
                    found[(key.value, str(index), leaf.value)] = leaf.start_mark.line + 1
        if isinstance(value, yaml.MappingNode):
            for sub, inner in value.value:
                found[(key.value, sub.value)] = sub.start_mark.line + 1
                for leaf, _ in inner.value if isinstance(inner, yaml.MappingNode) else []:
                    found[(key.value, sub.value, leaf.value)] = leaf.start_mark.line + 1
    return found


def _where(recipe_file, lines: dict, key: tuple) -> str:
    line = next((lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in lines), None)
    if recipe_file and line:
        return f"{recipe_file}:{line}"
    return "--set" if recipe_file and lines else str(recipe_file or "<recipe>")
