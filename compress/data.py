"""Text datasets from files (.txt, .csv, .tsv, .jsonl; optionally compressed), split with a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compress.errors import SourceError
from compress.sources import resolve_local


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int] | None  # class ids, when the data has labels


@dataclass(frozen=True)
class Dataset:
    train: Split
    eval: Split
    label_names: list[str] | None


def load_dataset(cfg) -> Dataset:
    """Load `cfg` (recipe DataConfig), drop empty rows, shuffle with `cfg.seed`, split off `eval_size`."""
    import numpy as np

    path = resolve_local(cfg.source)
    if path is None or not path.is_file():
        raise SourceError(f"data source {cfg.source!r}: expected a file")
    frame = _read_table(path, cfg.source)
    if cfg.text_field not in frame.columns:
        raise SourceError(f"data source {cfg.source!r}: no field {cfg.text_field!r} (have: {list(frame.columns)})")
    frame = frame[frame[cfg.text_field].notna()]
    frame = frame[frame[cfg.text_field].astype(str).str.strip() != ""]
    frame, labels, names = _labels(frame, cfg)
    texts = frame[cfg.text_field].astype(str).tolist()
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    if cfg.eval_size >= len(order):
        raise SourceError(f"data source {cfg.source!r}: {len(order)} rows, eval_size {cfg.eval_size} leaves none")
    eval_idx, train_idx = order[: cfg.eval_size], order[cfg.eval_size:]
    if cfg.train_limit:
        train_idx = train_idx[: cfg.train_limit]

    def take(idx) -> Split:
        return Split([texts[i] for i in idx], [labels[i] for i in idx] if labels else None)

    return Dataset(train=take(train_idx), eval=take(eval_idx), label_names=names)


def _labels(frame, cfg):
    """Drop rows whose label is not listed; return the kept rows, their class ids and the class names."""
    if not cfg.label_field:
        return frame, None, None
    if cfg.label_field not in frame.columns:
        raise SourceError(f"data source {cfg.source!r}: no field {cfg.label_field!r}")
    raw = frame[cfg.label_field].astype(str)
    names = list(cfg.labels) if cfg.labels else sorted(raw.unique())
    keep = raw.isin(names)
    ids = {name: i for i, name in enumerate(names)}
    return frame[keep], [ids[v] for v in raw[keep]], names


def _read_table(path: Path, source: str):
    import pandas as pd

    suffixes = [s.lower() for s in path.suffixes]
    kind = next((s for s in reversed(suffixes) if s in (".txt", ".csv", ".tsv", ".jsonl", ".json")), None)
    try:
        if kind == ".csv":
            return pd.read_csv(path)
        if kind == ".tsv":
            return pd.read_csv(path, sep="\t")
        if kind in (".jsonl", ".json"):
            return pd.read_json(path, lines=True)
        if kind == ".txt":
            from pandas.io.common import get_handle

            with get_handle(path, "r", compression="infer", encoding="utf-8") as handle:
                lines = [line.rstrip("\n") for line in handle.handle]
            return pd.DataFrame({"text": lines})
    except Exception as exc:
        raise SourceError(f"data source {source!r}: cannot read {path.name} ({exc})") from None
    raise SourceError(f"data source {source!r}: unknown file type (use .txt, .csv, .tsv or .jsonl)")
