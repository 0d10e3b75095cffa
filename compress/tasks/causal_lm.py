"""Task causal-lm: a decoder-only language model (Llama, SmolLM2, GPT-2 ...) that predicts the next token.

Unlike the encoder tasks, its stages differ in kind; their own implementations live in compress/stages/ and
are chosen by the table OVERRIDES in compress/stages/__init__.py: distillation on the teacher's generated text
(stages/lm_distill.py), ONNX export with past key/values (stages/lm_export.py) and a bench that times
generation: time to first token and tokens per second (stages/lm_bench.py).

Quality is measured on held-out text, ideally the teacher's own held-out completions ("teacher-style text"):
- perplexity: exp of the mean next-token negative log-likelihood over the scored tokens (lower is better);
- agreement: the share of scored positions where the model's greedy next token is the teacher's (higher is
  better; the headline, so that gates and selection keep "higher is better" for every task).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

NAME = "causal-lm"
HEADLINE = "agreement"
DEFAULT_LOSS = "sequence"
OUTPUT_NAME = "logits"


def load_backbone(path: Path, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    from compress.tasks.common import model_load_errors

    with model_load_errors(path):
        return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    """The tokenizer with a pad token (the end-of-sequence token when it has none)."""
    from compress.tasks.common import load_tokenizer as load

    tokenizer = load(path, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bundle_info(path: Path) -> dict:
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return {"task": NAME, "output": OUTPUT_NAME, "model_type": config.get("model_type"),
            "num_layers": config.get("num_hidden_layers"), "eos_token_id": config.get("eos_token_id")}


# ---------------------------------------------------------------- quality


def score(logits_argmax: np.ndarray, nll: np.ndarray, mask: np.ndarray, reference_argmax: np.ndarray | None) -> dict:
    """Perplexity and agreement over the positions where `mask` is 1.

    Position t of every array describes the prediction of token t+1 from tokens 0..t.
    """
    mask = mask.astype(bool)
    if not mask.any():
        return {}
    nll_mean = float(np.mean(nll[mask]))
    out = {"perplexity": float(np.exp(min(nll_mean, 50.0))), "nll": nll_mean}
    out["agreement"] = (float(np.mean(logits_argmax[mask] == reference_argmax[mask]))
                        if reference_argmax is not None else 1.0)
    return out


def next_token_stats(logits, input_ids):
    """(argmax, nll) per position from logits [B, S, V] (torch): the model's guess for token t+1 and the
    negative log-likelihood it gives the real token t+1. The last position has no next token: nll 0."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    argmax = logp.argmax(-1)
    nll = torch.zeros_like(argmax, dtype=torch.float32)
    nll[:, :-1] = -logp[:, :-1].gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return argmax, nll


# ---------------------------------------------------------------- GGUF teachers


# 2: the tokenizer is written in plain byte-level form (byte_level_decoding); folders of format 1 are converted again
GGUF_FOLDER_FORMAT = 2


def is_gguf(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() == ".gguf"


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """A Hugging Face folder (safetensors, config, tokenizer) made from a GGUF file, once per file content.

    transformers de-quantizes GGUF weights into a model that cannot be saved as loaded (its weights are tied
    to the reader), so a fresh model of the same config gets the state dict first. The GGUF tokenizer may name
    the wrong end-of-sequence token: the config's eos_token_id is authoritative.
    """
    from compress.artifacts import atomic_path
    from compress.errors import SourceError

    digest = _file_digest(gguf)
    stamp = dest / "compress-gguf.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"sha256": digest, "gguf": str(gguf),
                                                              "format": GGUF_FOLDER_FORMAT}:
        return dest
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError:  # pragma: no cover - transformers is a dependency
        raise SourceError("transformers is needed to read GGUF files") from None
    try:
        import gguf as _reader  # noqa: F401 - transformers needs it, and says so less clearly
    except ImportError:
        raise SourceError(f"{gguf}: reading GGUF files needs the gguf package (pip install gguf)") from None
    kwargs = {"gguf_file": gguf.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    except Exception as exc:  # gguf/transformers raise many types for an unreadable file
        raise SourceError(f"{gguf}: cannot read this GGUF file ({str(exc).splitlines()[0][:200]})") from None
    config = AutoConfig.for_model(**loaded.config.to_dict())
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    eos = config.eos_token_id if isinstance(config.eos_token_id, int) else None
    if eos is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    meta = gguf_fields(gguf, "tokenizer.ggml.add_bos_token", "tokenizer.ggml.model", "general.license")
    if meta["tokenizer.ggml.add_bos_token"] is False and getattr(tokenizer, "add_bos_token", False):
        # transformers' GGUF reader makes a Llama tokenizer that adds BOS whatever the file says; SmolLM2's says
        # no, and the extra token also hides the vocabulary from llama.cpp's converter (its pre-tokenizer hash)
        tokenizer.add_bos_token = False
    if meta["tokenizer.ggml.model"] == "gpt2":  # byte-level BPE: decoding must not drop the spaces
        tokenizer.clean_up_tokenization_spaces = False  # before punctuation ("a ." is two tokens, kept as written)
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        byte_level_decoding(tmp / "tokenizer.json")  # what onnxruntime-genai and llama.cpp's converter read right
        (tmp / "compress-gguf.json").write_text(json.dumps({"sha256": digest, "gguf": str(gguf),
                                                            "format": GGUF_FOLDER_FORMAT}) + "\n")
        license_id = meta["general.license"]
        if isinstance(license_id, str) and license_id:  # a model card, so that the licence check reads what the file declares
            (tmp / "README.md").write_text(f"---\nlicense: {license_id}\n---\n\nConverted by compress from "
                                           f"{gguf.name} (GGUF metadata general.license).\n")
    return dest


def byte_level_decoding(path: Path) -> bool:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenizer) that says byte_fallback, as transformers writes one it
    converts from a GGUF file, turned into the plain byte-level form; True when it changed the file.
    Clients read byte_fallback as SentencePiece's: onnxruntime-genai's tokenizer gives -1 for every space
    (SmolLM2: 0 of 30 texts as transformers tokenizes them; 30 of 30 after), and llama.cpp's convert_hf_to_gguf.py
    writes a SentencePiece ("llama") vocabulary whose tokenizer aborts llama.cpp (std::out_of_range) and
    detokenizes spaces as "Ġ". transformers gives the same ids either way: a byte-level vocabulary holds every
    byte, so the fallback never fires."""
    if not path.is_file():
        return False
    tok = json.loads(path.read_text(encoding="utf-8"))
    pre = tok.get("pre_tokenizer") or {}
    kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers") or []}
    model = tok.get("model") or {}
    if "ByteLevel" not in kinds or model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    model.update(byte_fallback=False, fuse_unk=False)
    tok["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    from compress.tasks.common import write_json

    write_json(path, tok)
    return True


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_fields(path: Path, *keys: str) -> dict:
    """Scalars of a GGUF file's metadata (str, bool or number) by key, read once; None where absent or unreadable
    (metadata is a hint: callers keep their defaults)."""
    try:
        from gguf import GGUFReader, GGUFValueType

        fields = GGUFReader(str(path)).fields
    except Exception:
        return dict.fromkeys(keys)
    out = {}
    for key in keys:
        field = fields.get(key)
        try:
            if field is None or not field.data:
                out[key] = None
                continue
            part, kind = field.parts[field.data[0]], field.types[0] if field.types else None
            if kind == GGUFValueType.STRING:
                out[key] = bytes(part).decode("utf-8", "replace")
            else:
                value = part.tolist()[0]
                out[key] = bool(value) if kind == GGUFValueType.BOOL else value
        except Exception:
            out[key] = None
    return out


def chat_prompt(tokenizer, text: str, template: str, system: str | None, use_chat: bool) -> str:
    """The prompt string for one input text: the chat template when the tokenizer has one (and it is wanted)."""
    content = template.format(text=text)
    if use_chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return content
