"""Token-level distillation of a causal LM (cached top-k and online KL) and the importance-based layer choice,
on the tiny in-process Llama of conftest.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest


def _llama(folder):
    from compress.tasks.causal_lm import load_backbone, load_tokenizer

    return load_backbone(folder).eval(), load_tokenizer(folder)


def _batch(tokenizer, texts: list[str], k: int, teacher=None):
    """A lm_text.pad_batch-style batch scoring everything after the first two tokens, with the teacher's top-k."""
    import torch

    from compress.stages.lm_text import Tokenized, pad_batch

    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    tok = Tokenized(ids, [[0, 0] + [1] * (len(r) - 2) for r in ids], "test")
    batch = pad_batch(tok, list(range(len(ids))), tokenizer.pad_token_id)
    if teacher is not None:
        with torch.no_grad():
            logp = torch.log_softmax(teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
        top = torch.topk(logp[:, :-1], k, -1)  # position t predicts token t+1: stored at t+1, like `scored`
        batch["topk_ids"] = torch.nn.functional.pad(top.indices, (0, 0, 1, 0))
        batch["topk_logp"] = torch.nn.functional.pad(top.values, (0, 0, 1, 0))
    return batch


TEXTS = ["the movie was very good and the cast was great", "a dull film but the story is moving",
         "it was not really boring", "this plot is flat and the film is awful but fine"]


@pytest.mark.parametrize("targets", ["cached", "online"])
def test_lm_distill_token_kl_is_zero_for_the_teacher_and_falls_when_training(tiny_llama, targets):
    import torch

    from compress.stages.distill import build_student
    from compress.stages.layer_choice import FromTeacher
    from compress.stages.lm_distill import distiller_module

    teacher, tokenizer = _llama(tiny_llama)
    batch = _batch(tokenizer, TEXTS, k=8, teacher=teacher)
    if targets == "online":
        batch = {k: v for k, v in batch.items() if not k.startswith("topk")}
    same = distiller_module(copy.deepcopy(teacher), teacher, {"token-kl": 1.0}, 1.0)
    with torch.no_grad():
        assert float(same(**batch)) < 1e-4
    spec = type("Spec", (), {"from_teacher": FromTeacher(layers=[0, 3])})()
    torch.manual_seed(0)
    student = build_student(spec, None, tiny_llama, teacher, False)[0].train()
    module = distiller_module(student, teacher, {"token-kl": 1.0}, 2.0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = module(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("scores, keep, expected", [
    ([0.0, 5.0, 1.0, 9.0, 2.0, 0.1], 4, [0, 1, 3, 5]),  # first and last whatever their scores
    ([3.0, 1.0, 2.0, 0.5], 2, [0, 3]),
    ([3.0, 1.0, 2.0, 0.5], 4, [0, 1, 2, 3]),
])
def test_layer_choice_choose_keeps_ends_and_most_important(scores, keep, expected):
    from compress.stages.layer_choice import choose

    assert choose(scores, keep) == expected


def test_layer_choice_importance_scores_a_layer_that_does_nothing_zero(tiny_llama):
    import torch

    from compress.stages.layer_choice import importance

    teacher, tokenizer = _llama(tiny_llama)
    with torch.no_grad():
        for i in (1, 2):  # a block whose outputs are zero adds nothing to the residual stream
            teacher.model.layers[i].self_attn.o_proj.weight.zero_()
            teacher.model.layers[i].mlp.down_proj.weight.zero_()
    scores = importance(teacher, [_batch(tokenizer, TEXTS, k=4)])
    assert len(scores) == 4 and scores[1] < 1e-6 and scores[2] < 1e-6 and min(scores[0], scores[3]) > 1e-4
    assert len(teacher.model.layers) == 4  # the teacher is whole again


def test_layer_choice_importance_matches_removing_each_layer_from_the_whole_model(tiny_llama):
    """The scores continue from the cached input of the removed layer: the same as running the model without it."""
    import torch

    from compress.stages.layer_choice import importance

    teacher, tokenizer = _llama(tiny_llama)
    batch = _batch(tokenizer, TEXTS, k=4)
    keep = batch["scored"][:, 1:].bool()
    layers = teacher.model.layers

    def logprobs():
        return torch.log_softmax(teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                                 .logits[:, :-1][keep], -1)

    with torch.no_grad():
        ref, expected = logprobs(), []
        for i in range(len(layers)):
            teacher.model.layers = torch.nn.ModuleList([m for j, m in enumerate(layers) if j != i])
            expected.append(float(torch.nn.functional.kl_div(logprobs(), ref, log_target=True, reduction="sum"))
                            / int(keep.sum()))
        teacher.model.layers = layers
    assert importance(teacher, [batch]) == pytest.approx(expected, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("spec, error", [
    ({"layers": "auto"}, "give keep with layers: auto"),
    ({"layers": [0, 3], "keep": 2}, "give keep with layers: auto"),
    ({"layers": "auto", "keep": 2}, None),
])
def test_layer_choice_from_teacher_wants_keep_with_auto(spec, error):
    from pydantic import ValidationError

    from compress.stages.layer_choice import FromTeacher

    if error is None:
        assert FromTeacher(**spec).keep == 2
        return
    with pytest.raises(ValidationError, match=error):
        FromTeacher(**spec)


def test_lm_topk_write_then_read_round_trips_per_row(tmp_path):
    from compress.stages import lm_topk

    rows = [{"id": 3, "topk_ids": [[5, 1], [2, 7]], "topk_logprobs": [[-0.1, -2.5], [-0.7, -0.9]]},
            {"id": 9}, {"id": 4, "topk_ids": [[8, 0]], "topk_logprobs": [[-0.01, -5.0]]}]
    summary = lm_topk.write(tmp_path, rows)
    kept = lm_topk.read(tmp_path)
    assert summary["k"] == 2 and summary["positions"] == 3 and all("topk_ids" not in r for r in rows)
    assert sorted(kept) == [3, 4] and kept[3][0].tolist() == [[5, 1], [2, 7]]
    np.testing.assert_allclose(kept[4][1], [[-0.01, -5.0]], atol=1e-3)


@pytest.mark.parametrize("rows, shared", [
    ([[1, 5, 6, 7, 8, 9, 10], [1, 5, 6, 7, 8, 11], [1, 5, 6, 7, 8, 12, 13, 14]], 5),  # right-padded rows
    ([[1, 5, 6, 7, 8], [1, 5, 6, 7, 8]], 4),  # identical rows: the last position stays the rows' own
    ([[1, 5, 6], [9, 5, 6]], 0),
])
def test_lm_text_logits_at_shares_a_prefix_with_the_same_values_and_gradients(tiny_llama, rows, shared):
    import torch

    from compress.stages import lm_text

    model, _ = _llama(tiny_llama)
    tok = lm_text.Tokenized(rows, [[0] + [1] * (len(r) - 1) for r in rows], "test")
    batch = lm_text.pad_batch(tok, list(range(len(rows))), 2)
    keep = batch["scored"][:, 1:].bool()
    assert lm_text.shared_columns(batch["input_ids"], batch["attention_mask"]) == shared

    def run(minimum):
        model.zero_grad()
        logits = lm_text.logits_at(model, batch["input_ids"], batch["attention_mask"], keep, min_shared=minimum)
        logits.square().mean().backward()
        return logits.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone()

    (shared_logits, shared_grad), (plain_logits, plain_grad) = run(1), run(10**9)
    assert torch.allclose(shared_logits, plain_logits, atol=1e-5)
    assert torch.allclose(shared_grad, plain_grad, atol=1e-6)
