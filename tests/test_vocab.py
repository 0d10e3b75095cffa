"""Vocabulary trimming (compress/vocab.py) with the real MiniLM WordPiece tokenizer: same pieces on the texts
it was trimmed for, sub-word fallback outside them, the held-out coverage metric, the sliced embeddings."""

from __future__ import annotations

import pytest

from compress import vocab
from compress.errors import StageError

TRAIN = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés",
         "Spielberg's best since Jaws!", "an unforgettable, heartbreaking story"]


@pytest.fixture(scope="module")
def trimmed(tiny_bert, tmp_path_factory):
    chosen = vocab.choose(tiny_bert, TRAIN, extra=["zebra"])
    return chosen, vocab.trimmed_folder(tiny_bert, tmp_path_factory.mktemp("trimmed"), chosen)


def _ids(folder, text):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text)["input_ids"]


@pytest.mark.parametrize("text", TRAIN + ["witty movie, best story", "zebra"])
def test_vocab_trimmed_tokenization_equals_original_in_vocabulary(tiny_bert, trimmed, text):
    chosen, folder = trimmed

    new = _ids(folder, text)

    assert [chosen.kept[i] for i in new] == _ids(tiny_bert, text)


@pytest.mark.parametrize("text", ["photosynthesis", "xylophones rule", "Zürich"])
def test_vocab_out_of_vocabulary_words_fall_back_to_pieces(tiny_bert, trimmed, text):
    from transformers import AutoTokenizer

    chosen, folder = trimmed
    tokenizer = AutoTokenizer.from_pretrained(folder)

    ids = tokenizer(text)["input_ids"]

    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == AutoTokenizer.from_pretrained(tiny_bert).decode(
        _ids(tiny_bert, text), skip_special_tokens=True)
    assert len(ids) >= len(_ids(tiny_bert, text))


def test_vocab_keeps_special_and_single_character_pieces(trimmed):
    chosen, folder = trimmed
    words = (folder / "vocab.txt").read_text().splitlines()

    assert words[0] == "[PAD]" and {"[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##a", "z", "##z"} <= set(words)
    assert 1900 < len(words) == len(chosen.kept) < chosen.original_size


@pytest.mark.parametrize("texts, outside", [
    (["a gorgeous movie"], 0),
    (["a gorgeous elephant"], 1),
])
def test_vocab_coverage_counts_held_out_tokens_outside(tiny_bert, trimmed, texts, outside):
    chosen, _ = trimmed

    stats = vocab.coverage(tiny_bert, chosen, texts)

    assert stats["heldout_tokens_outside"] == outside and stats["heldout_texts_respelled"] == min(outside, 1)
    assert stats["vocab_size"] == len(chosen.kept) and stats["heldout_tokens"] == 3


def test_vocab_slice_embeddings_keeps_the_rows_of_kept_tokens(tiny_bert, trimmed):
    import torch
    from transformers import AutoModel

    chosen, folder = trimmed
    model, original = AutoModel.from_pretrained(tiny_bert).eval(), AutoModel.from_pretrained(tiny_bert).eval()

    vocab.slice_embeddings(model, chosen)

    assert model.config.vocab_size == len(chosen.kept) == model.get_input_embeddings().num_embeddings
    ids, mask = torch.tensor([_ids(folder, TRAIN[0])]), torch.ones(1, len(_ids(folder, TRAIN[0])), dtype=torch.long)
    with torch.no_grad():
        mine = model(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = original(input_ids=torch.tensor([_ids(tiny_bert, TRAIN[0])]), attention_mask=mask).last_hidden_state
    assert torch.allclose(mine, theirs, atol=1e-6)


def test_vocab_refuses_tokenizers_that_are_not_wordpiece(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')

    with pytest.raises(StageError, match="WordPiece"):
        vocab.choose(tmp_path, ["text"])
