"""Text datasets from files (.txt, .csv, .tsv, .jsonl, optionally compressed; .parquet), Hugging Face `datasets`
(save_to_disk folders, hf:<name> hub datasets), split with a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compress.errors import SourceError
from compress.sources import HF_DATASET_PREFIX, import_datasets, is_saved_dataset, load_hub_dataset, resolve_local


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int] | None  # class ids, when the data has labels


@dataclass(frozen=True)
class Dataset:
    train: Split
    eval: Split
    label_names: list[str] | None
    unlabeled: list[str] | None = None  # data.unlabeled: more texts for distillation, none also in train or eval


def load_dataset(cfg) -> Dataset:
    """Load `cfg` (recipe DataConfig), drop empty rows, shuffle with `cfg.seed`, split off `eval_size` (or take the
    eval rows from `cfg.eval_split`)."""
    import numpy as np

    texts, labels, names = _rows(cfg, cfg.split)
    _check_classes(cfg, labels, names)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(texts))
    if cfg.eval_split:
        eval_texts, eval_labels, _ = _rows(cfg, cfg.eval_split, names)  # the training split's class ids
        held, train_idx = _take(eval_texts, eval_labels, rng.permutation(len(eval_texts))[: cfg.eval_size]), order
    else:
        if cfg.eval_size >= len(order):
            raise SourceError(f"data source {cfg.source!r}: {len(order)} rows, eval_size {cfg.eval_size} leaves none")
        eval_idx, train_idx = order[: cfg.eval_size], order[cfg.eval_size:]
        held = _take(texts, labels, eval_idx)
    if cfg.train_limit:
        train_idx = train_idx[: cfg.train_limit]
    train = _take(texts, labels, train_idx)
    extra = _unlabeled(cfg, rng, {*train.texts, *held.texts}) if cfg.unlabeled else None
    return Dataset(train=train, eval=held, label_names=names, unlabeled=extra)


def _unlabeled(cfg, rng, known: set[str]) -> list[str]:
    """data.unlabeled's texts, read like data.source (labels ignored), without those in `known` (held-out texts
    must stay unseen) or repeated, in a seeded order, at most `limit`."""
    spec = cfg.unlabeled
    plain = cfg.model_copy(update={"source": spec.source, "text_field": spec.text_field, "label_field": None,
                                   "labels": None, "split": None, "eval_split": None, "unlabeled": None})
    texts, _, _ = _rows(plain, None)
    fresh = list(dict.fromkeys(t for t in texts if t not in known))
    if not fresh:
        raise SourceError(f"data.unlabeled {spec.source!r}: every text is already in the training or held-out rows")
    order = rng.permutation(len(fresh))
    return [fresh[i] for i in order[: spec.limit or len(fresh)]]


def _take(texts, labels, idx) -> Split:
    return Split([texts[i] for i in idx], [labels[i] for i in idx] if labels else None)


def _rows(cfg, split: str | None, known: list[str] | None = None):
    """The non-empty texts of one split, their class ids and the class names (`known` ones, if given)."""
    where = f"data source {cfg.source!r}" + (f" split {split!r}" if split else "")
    frame, classes = _read_source(cfg, split, where)
    if cfg.text_field not in frame.columns:
        raise SourceError(f"{where}: no field {cfg.text_field!r} (have: {list(frame.columns)})")
    if _typed(cfg.source):  # JSON and parquet say what type a value is: a text must be a string
        # A missing text is an empty row (dropped) in a table; a JSON line that says null is a mistake.
        json_lines = any(s.lower() in (".jsonl", ".json") for s in Path(cfg.source).suffixes)
        wrong = frame[cfg.text_field].map(lambda v: not isinstance(v, str) and (json_lines or _kind(v) != "null"))
        if wrong.any():
            index = wrong.idxmax()
            value = frame[cfg.text_field][index]
            raise SourceError(f"{where}: {_row(cfg.source, frame, index)}: {cfg.text_field!r} is "
                              f"{_kind(value)}, not a text; fix or remove that row")
    frame = frame[frame[cfg.text_field].notna()]
    frame = frame[frame[cfg.text_field].astype(str).str.strip() != ""]
    if frame.empty:
        raise SourceError(f"{where}: no row has a text in {cfg.text_field!r}")
    frame, labels, names = _labels(frame, cfg, known or classes, where, blank_ok=classes is not None)
    return frame[cfg.text_field].astype(str).tolist(), labels, names


def _read_source(cfg, split: str | None, where: str):
    """One split of the source as a DataFrame, and the label names when a ClassLabel feature gives them."""
    source = cfg.source
    if source.startswith(HF_DATASET_PREFIX):
        return _from_hf(load_hub_dataset(source, split or "train"), cfg, where)
    path = resolve_local(source)
    if path is None:
        raise SourceError(f"{where}: no such file or folder (a Hugging Face hub dataset is written hf:{source})")
    if path.is_dir():
        if not is_saved_dataset(path):
            raise SourceError(f"{where}: a folder, but not one written by datasets' save_to_disk (no "
                              "dataset_dict.json, state.json or dataset_info.json); point at a file or such a folder")
        return _from_hf(_load_saved(path, split, where), cfg, where)
    if split:
        raise SourceError(f"{where}: {path.name} is one table; split and eval_split apply to save_to_disk "
                          "DatasetDict folders and hf: sources")
    return read_table(path, source), None


def _load_saved(path: Path, split: str | None, where: str):
    datasets = import_datasets(where)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # missing arrow files, bad JSON, version mismatch: one sentence naming the folder
        raise SourceError(f"{where}: cannot read the datasets folder {path} ({_first_line(exc)})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        if split:
            raise SourceError(f"{where}: {path.name} holds one Dataset, not a DatasetDict with splits; remove "
                              "split and eval_split")
        return loaded
    splits = list(loaded)
    if split is None:
        split = "train" if "train" in loaded or len(splits) != 1 else splits[0]
    if split not in loaded:
        raise SourceError(f"{where}: no split {split!r} in {path.name} (have: {splits}); set data.split")
    return loaded[split]


def _from_hf(table, cfg, where: str):
    """A datasets.Dataset as a DataFrame of the recipe's fields; ClassLabel ids become their names."""
    from datasets import ClassLabel

    fields = [f for f in (cfg.text_field, cfg.label_field) if f]
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise SourceError(f"{where}: no field {missing[0]!r} (have: {table.column_names})")
    frame = table.select_columns(fields).to_pandas()
    feature = table.features.get(cfg.label_field) if cfg.label_field else None
    if not isinstance(feature, ClassLabel):
        return frame, None
    # -1 (no label, as in many test splits) maps to NaN and is dropped with the other unlisted labels.
    frame[cfg.label_field] = frame[cfg.label_field].map(dict(enumerate(feature.names)))
    return frame, list(feature.names)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _labels(frame, cfg, known: list[str] | None = None, where: str = "", blank_ok: bool = False):
    """Drop rows whose label is not listed; return the kept rows, their class ids and the class names.

    A blank label is an error naming its row (a ClassLabel's -1, "no label", is dropped instead, as unlisted);
    labels are compared as text, with 1.0 read as "1" (a numeric column pandas made float)."""
    if not cfg.label_field:
        return frame, None, None
    if cfg.label_field not in frame.columns:
        raise SourceError(f"data source {cfg.source!r}: no field {cfg.label_field!r} (have: {list(frame.columns)})")
    column = frame[cfg.label_field]
    blank = column.map(lambda v: v is None or (isinstance(v, float) and v != v) or
                       (isinstance(v, str) and not v.strip()))
    if blank.any() and not blank_ok:
        raise SourceError(f"{where or f'data source {cfg.source!r}'}: {_row(cfg.source, frame, blank.idxmax())} has "
                          f"no label in {cfg.label_field!r} (a blank cell); fill it in or remove the row")
    if _typed(cfg.source) and not blank_ok:
        wrong = column.map(lambda v: isinstance(v, (list, dict)))
        if wrong.any():
            raise SourceError(f"{where}: {_row(cfg.source, frame, wrong.idxmax())}: {cfg.label_field!r} is "
                              f"{_kind(column[wrong.idxmax()])}, not a label; fix or remove that row")
    raw = column.map(_label_text)
    names = list(cfg.labels) if cfg.labels else (list(known) if known else _sorted_names(raw.unique()))
    keep = raw.isin(names)
    if not keep.any():
        seen = sorted(raw.unique())[:5]
        raise SourceError(f"data source {cfg.source!r}: no row has one of the labels {names} in "
                          f"{cfg.label_field!r} (seen: {seen})")
    ids = {name: i for i, name in enumerate(names)}
    return frame[keep], [ids[v] for v in raw[keep]], names


MAX_CLASSES = 1000


def _check_classes(cfg, labels, names) -> None:
    """A label column with one class, or more than MAX_CLASSES, is almost always the wrong column: one sentence."""
    if labels is None or not names or cfg.labels:  # classes the recipe lists are the user's choice
        return
    if len(names) > MAX_CLASSES:
        raise SourceError(f"data source {cfg.source!r}: {len(names)} different labels in {cfg.label_field!r} (more "
                          f"than {MAX_CLASSES}); is label_field the right column? List the classes in data.labels")
    present = sorted({names[i] for i in labels})
    if len(present) < 2:
        raise SourceError(f"data source {cfg.source!r}: every row has the label {present[0]!r} in "
                          f"{cfg.label_field!r}; a classifier needs at least two classes")


def _sorted_names(values) -> list[str]:
    """Label names in order; numbers as numbers ("2" before "10"), so that label "k" is class k of a new head."""
    values = [str(v) for v in values]
    if all(v.isdigit() for v in values):
        return sorted(values, key=lambda v: (int(v), v))
    return sorted(values)


def _label_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _typed(source: str) -> bool:
    suffixes = [s.lower() for s in Path(source).suffixes]
    return (source.startswith(HF_DATASET_PREFIX) or any(s in (".jsonl", ".json", ".parquet") for s in suffixes)
            or (not suffixes and not source.startswith("package:")))


def _row(source: str, frame, index) -> str:
    """How a person finds the row: its line in a text file, else its position."""
    position = list(frame.index).index(index) if index in frame.index else index
    suffixes = [s.lower() for s in Path(source).suffixes]
    if any(s in (".csv", ".tsv") for s in suffixes):
        return f"line {int(index) + 2}"  # the header is line 1
    if any(s in (".jsonl", ".json") for s in suffixes):
        return f"line {int(index) + 1}"
    return f"row {int(position) + 1}"


def _kind(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "null"
    return {list: "a list", dict: "an object", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def read_table(path: Path, source: str):
    import pandas as pd

    suffixes = [s.lower() for s in path.suffixes]
    kind = next((s for s in reversed(suffixes) if s in (".txt", ".csv", ".tsv", ".jsonl", ".json", ".parquet")), None)
    try:
        if kind == ".parquet":
            return pd.read_parquet(path, engine="pyarrow")
        if kind == ".csv":
            return pd.read_csv(path)
        if kind == ".tsv":
            return pd.read_csv(path, sep="\t")
        if kind in (".jsonl", ".json"):
            return pd.read_json(path, lines=True, dtype=False)  # keep each value's type: "123" stays a string
        if kind == ".txt":
            from pandas.io.common import get_handle

            with get_handle(path, "r", compression="infer", encoding="utf-8") as handle:
                lines = [line.rstrip("\n") for line in handle.handle]
            return pd.DataFrame({"text": lines})
    except Exception as exc:
        raise SourceError(f"data source {source!r}: cannot read {path.name} ({_first_line(exc)})") from None
    raise SourceError(f"data source {source!r}: unknown file type (use .txt, .csv, .tsv, .jsonl or .parquet, or a "
                      "folder written by datasets' save_to_disk)")
