"""Vocabulary trimming: keep the word pieces a recipe's texts use, slice the embedding table, write a matching
tokenizer.

For a small student the word embeddings are most of its weights (MiniLM: 30,522 x 384 = 11.7M of 22.7M). Kept:
the special tokens, every piece the training texts use, every single character and every '##' + single
character piece of the vocabulary (so that any word can still be spelled: WordPiece falls back to shorter
pieces), and the pieces of an optional extra list of words. Kept tokens keep their relative order, so [PAD]
stays 0. WordPiece is greedy longest-match-first: a word whose pieces were all kept tokenizes exactly as
before (a longer match in the trimmed vocabulary would have been one in the original), so the recipe's texts
give the same pieces, only renumbered. Supported: WordPiece tokenizers with a tokenizer.json (BERT family).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from compress.artifacts import remove
from compress.errors import StageError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


@dataclass(frozen=True)
class Trimmed:
    kept: list[int]  # original ids of the kept tokens, in their new order (new id = position)
    original_size: int

    @property
    def new_id(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}


def load_wordpiece(model_dir: Path):
    """The `tokenizers.Tokenizer` of `model_dir` without padding or truncation, and its tokenizer.json."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if spec.get("model", {}).get("type") != "WordPiece":
        found = spec.get("model", {}).get("type", "no tokenizer.json")
        raise StageError(f"student.vocab.trim supports WordPiece tokenizers (BERT family); {model_dir} has {found}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, spec


def used_ids(tokenizer, texts: list[str]) -> set[int]:
    used: set[int] = set()
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=True):
        used.update(encoding.ids)
    return used


def choose(model_dir: Path, texts: list[str], extra: list[str] = ()) -> Trimmed:
    """The tokens to keep for `texts` (and the words in `extra`)."""
    tokenizer, spec = load_wordpiece(model_dir)
    vocab = spec["model"]["vocab"]
    prefix = spec["model"].get("continuing_subword_prefix", "##")
    keep = used_ids(tokenizer, list(texts) + list(extra))
    keep |= {t["id"] for t in spec.get("added_tokens", [])}
    keep |= {i for token, i in vocab.items()
             if len(token) == 1 or (token.startswith(prefix) and len(token) == len(prefix) + 1)}
    keep |= {vocab[word] for word in extra if word in vocab}
    return Trimmed(kept=sorted(keep), original_size=len(vocab))


def write_tokenizer(source_dir: Path, dest: Path, trimmed: Trimmed) -> None:
    """tokenizer.json, vocab.txt and tokenizer_config.json in `dest` for the trimmed vocabulary."""
    _, spec = load_wordpiece(source_dir)
    new_id = trimmed.new_id
    by_old = {i: token for token, i in spec["model"]["vocab"].items()}
    spec["model"]["vocab"] = {by_old[old]: new for new, old in enumerate(trimmed.kept)}
    for token in spec.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    for special in ((spec.get("post_processor") or {}).get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (dest / "vocab.txt").write_text("".join(by_old[old] + "\n" for old in trimmed.kept), encoding="utf-8")
    config_path = Path(source_dir) / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in config["added_tokens_decoder"].items()}
        (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def trimmed_folder(source_dir: Path, dest: Path, trimmed: Trimmed) -> Path:
    """A copy of `source_dir`'s bundle files (pooling config, tokenizer) with the trimmed tokenizer."""
    from compress.tasks.common import copy_bundle_files

    remove(dest)  # a leftover of an interrupted run (a link is removed itself, never followed)
    dest.mkdir(parents=True)
    copy_bundle_files(Path(source_dir), dest)
    write_tokenizer(source_dir, dest, trimmed)
    return dest


def slice_embeddings(model, trimmed: Trimmed) -> None:
    """Keep the rows of `trimmed.kept` in the model's word embeddings (in place); config.vocab_size follows."""
    import torch

    old = model.get_input_embeddings()
    if old.num_embeddings != trimmed.original_size:
        raise StageError(f"student.vocab.trim: the model has {old.num_embeddings} word embeddings, its tokenizer "
                         f"{trimmed.original_size} tokens")
    index = torch.tensor(trimmed.kept)
    pad = getattr(old, "padding_idx", None)
    pad = trimmed.new_id.get(pad) if pad is not None else None
    new = torch.nn.Embedding(len(index), old.embedding_dim, padding_idx=pad)
    new.weight = torch.nn.Parameter(old.weight.detach()[index].clone(), requires_grad=old.weight.requires_grad)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(index)
    if getattr(model.config, "pad_token_id", None) is not None:
        model.config.pad_token_id = trimmed.new_id.get(model.config.pad_token_id, 0)


def coverage(model_dir: Path, trimmed: Trimmed, texts: list[str]) -> dict:
    """How the original tokenizer's pieces of `texts` (held out) fare in the trimmed vocabulary."""
    tokenizer, _ = load_wordpiece(model_dir)
    kept, total, outside, changed = set(trimmed.kept), 0, 0, 0
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        missing = sum(1 for i in encoding.ids if i not in kept)
        total, outside, changed = total + len(encoding.ids), outside + missing, changed + bool(missing)
    return {"vocab_size": len(trimmed.kept), "vocab_original": trimmed.original_size,
            "heldout_tokens": total, "heldout_tokens_outside": outside,
            "heldout_outside_rate": round(outside / max(total, 1), 5),
            "heldout_texts_respelled": changed, "heldout_texts": len(texts)}
