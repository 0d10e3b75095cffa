"""The bench's inputs, built once before anything is timed: fixed-length and real-length timing sets, eval batches.

Each is an .npz file per tokenizer (variants may not share one), made by the task's input hook; the device harness
(compress/targets/harness.py) reads them as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from compress.artifacts import TMP_PREFIX

EVAL_BATCH = 32
DATA = "data"  # a seq_lens entry: the held-out texts at their own lengths (row id part `sdata`)
REAL_GROUPS = 64  # at most this many calls of `batch` texts in a real-length set, cycled through while timing


def savez(path: Path, arrays: dict) -> None:
    """np.savez under a temporary name, renamed when complete: a killed run leaves no truncated input file."""
    import numpy as np

    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


class Inputs:
    """Pre-built npz inputs, per tokenizer (variants may not share one): timing sets and eval batches, made by
    the task's input hook from its examples (texts, images)."""

    def __init__(self, work: Path, texts, max_length: int, task):
        self.work, self.texts, self.max_length = work / "inputs", texts, max_length
        self.hook, self.names = task.inputs, task.INPUT_NAMES
        self.work.mkdir(parents=True, exist_ok=True)
        self._batches: dict[str, list[dict]] = {}

    def _key(self, folder: Path) -> str:
        import hashlib

        digest = hashlib.sha256()
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "merges.txt"):
            if (folder / name).is_file():
                digest.update(name.encode() + (folder / name).read_bytes())
        return digest.hexdigest()[:12]

    def timing(self, folder: Path, batch: int, seq: int | str) -> Path:
        """Real eval texts padded to exactly `seq` tokens (images: as they are), repeated up to the batch size;
        for seq DATA, groups of `batch` texts at their own lengths (see `real`)."""
        if seq == DATA:
            return self.real(folder, batch)
        path = self.work / f"{self._key(folder)}-b{batch}-s{seq}.npz"
        if not path.is_file():
            texts = [self.texts[i % len(self.texts)] for i in range(batch)]
            savez(path, self.hook(folder).encode(texts, seq, pad_to_max=True))
        return path

    def real(self, folder: Path, batch: int) -> Path:
        """The held-out texts as they are, `batch` at a time in text order, each group padded only to its longest
        text (batch 1: no padding at all), up to REAL_GROUPS groups: npz keys g0_<input>, g1_<input>, ..."""
        path = self.work / f"{self._key(folder)}-b{batch}-s{DATA}.npz"
        if not path.is_file():
            texts = list(self.texts[: batch * REAL_GROUPS])
            texts = texts if len(texts) >= batch else [texts[i % len(texts)] for i in range(batch)]
            groups = [texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)]
            hook = self.hook(folder)
            savez(path, {f"g{i}_{name}": array for i, group in enumerate(groups)
                         for name, array in hook.encode(group, self.max_length).items()})
        return path

    def median_length(self, folder: Path) -> float | None:
        """The median token count of the held-out texts with this folder's tokenizer (None: not text)."""
        import numpy as np

        lengths = [n for b in self.eval(folder)[1] if "attention_mask" in b for n in b["attention_mask"].sum(axis=1)]
        return float(np.median(lengths)) if lengths else None

    def eval(self, folder: Path) -> tuple[Path, list[dict]]:
        key = self._key(folder)
        path = self.work / f"{key}-eval.npz"
        if key not in self._batches:
            self._batches[key] = self.hook(folder).batches(self.texts, self.max_length, EVAL_BATCH)
            savez(path, {f"b{i}_{n}": b[n] for i, b in enumerate(self._batches[key]) for n in self.names})
        return path, self._batches[key]
