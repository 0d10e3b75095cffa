"""The generate stage's own decoding loop (compress/stages/lm_decode.py) against transformers' generate."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("rows, expected", [
    ([[1, 2, 3, 4], [1, 2, 3, 5, 6]], 3),
    ([[1, 2, 3], [1, 2, 3, 4]], 2),  # a row that is all prefix keeps its last token
    ([[7, 2], [1, 2]], 0),
    ([[1, 2, 3]], 0),  # one row: nothing to share
])
def test_common_prefix_leaves_each_row_a_token(rows, expected):
    from compress.stages.lm_decode import common_prefix

    assert common_prefix(rows) == expected


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 50, 0.9), (1.0, 5, 0.5), (0.8, None, 0.95),
                                                       (1.3, 20, 1.0), (0.5, 50, 0.01)])
def test_candidates_give_transformers_sampling_distribution(temperature, top_k, top_p):
    import torch
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from compress.stages.lm_decode import candidates

    torch.manual_seed(0)
    logits = torch.randn(6, 300) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                                  + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
    expected = torch.softmax(warpers(None, logits.clone()), -1)
    values, index = candidates(logits, {"temperature": temperature, "top_k": top_k, "top_p": top_p})
    got = torch.zeros_like(logits).scatter(-1, index, torch.softmax(values, -1))
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("stop", ["eos", "first row's second token"])
def test_generate_greedy_matches_transformers_with_left_padding(tiny_llama, stop):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.stages import lm_decode, lm_topk

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.padding_side = "left"
    texts = ["<|im_start|> system : be a critic <|im_end|> <|im_start|> user : " + t for t in
             ("the film was good", "a movie", "the plot and the cast were not really brilliant but fine")]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                        return_token_type_ids=False)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert lm_decode.common_prefix(prompts) > 5  # the shared system message and template are computed once
    eos = 2 if stop == "eos" else lm_decode.generate(model, prompts, 2, {-1}, 2, None)[0][0][1]

    def hf():
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=7, do_sample=False, pad_token_id=2, eos_token_id=eos,
                                 output_logits=True, return_dict_in_generate=True, temperature=None, top_p=None,
                                 top_k=None)
        return out.sequences[:, encoded["input_ids"].shape[1]:].tolist(), lm_topk.capture(out.logits, 4)

    expected, (want_ids, want_logp) = hf()
    new, (ids, logp) = lm_decode.generate(model, prompts, 7, {eos}, 2, None, keep_top=4)
    assert new == expected
    if stop != "eos":  # the first row ended early and left the batch; the others went on
        end = new[0].index(eos)
        assert end <= 1 and set(new[0][end + 1:]) <= {2} and len(new[0]) > end + 1
        assert any(eos not in row[:end + 1] for row in new[1:])
    for r, row in enumerate(new):  # the distributions of every step up to each row's end
        steps = row.index(eos) + 1 if eos in row else len(row)
        assert torch.equal(ids[r, :steps], want_ids[r, :steps])
        assert torch.allclose(logp[r, :steps], want_logp[r, :steps], atol=1e-4)


def test_generate_sampling_is_seeded_and_pads_after_the_end(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from compress.stages import lm_decode

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [[1, 5, 6, 7], [1, 5, 9], [1, 5, 6, 10, 11]]
    sampling = {"temperature": 1.5, "top_k": 20, "top_p": 0.95}
    torch.manual_seed(3)
    first, _ = lm_decode.generate(model, prompts, 12, {2}, 0, sampling)
    torch.manual_seed(3)
    assert lm_decode.generate(model, prompts, 12, {2}, 0, sampling)[0] == first
    for row in first:
        if 2 in row:  # everything after the end token is padding, as transformers writes it
            assert set(row[row.index(2) + 1:]) <= {0}


@pytest.mark.parametrize("field, value, plain", [(None, None, True), ("repetition_penalty", 1.2, False),
                                                 ("min_p", 0.05, False), ("top_k", 10, True),
                                                 ("no_repeat_ngram_size", 3, False)])
def test_plain_config_sends_other_processors_to_transformers(field, value, plain):
    from transformers import GenerationConfig

    from compress.stages.lm_decode import plain_config

    config = GenerationConfig(**({field: value} if field else {}))
    assert plain_config(config) is plain


def test_generate_stage_sends_a_repetition_penalty_to_transformers(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.stages import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.padding_side = "left"
    model.generation_config.repetition_penalty = 5.0  # the own loop would ignore it
    rows = [{"id": i, "prompt": t, "prompt_text": t} for i, t in enumerate(["the film was good", "a movie"])]
    cfg = generate.Config(do_sample=False, max_new_tokens=6)
    records = generate._generate(model, tokenizer, rows, cfg)
    encoded = tokenizer([r["prompt_text"] for r in rows], return_tensors="pt", padding=True,
                        add_special_tokens=False, return_token_type_ids=False)
    with torch.inference_mode():
        penalised = model.generate(**encoded, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   temperature=None, top_p=None, top_k=None)
        model.generation_config.repetition_penalty = 1.0
        plain = model.generate(**encoded, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               temperature=None, top_p=None, top_k=None)
    width = encoded["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    cut = [row[width:][:row[width:].index(eos)] if eos in row[width:] else row[width:] for row in penalised.tolist()]
    wanted = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in cut]
    assert [r["completion"] for r in records] == wanted
    assert penalised.tolist() != plain.tolist()  # the penalty changed the text: the fallback is what applied it
