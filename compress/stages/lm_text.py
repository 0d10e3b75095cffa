"""Training and evaluation text of a causal-lm run, tokenized with a mask of the positions that are scored.

With a generated dataset (the generate stage's artifact) a sequence is prompt + completion (+ the end token
when the teacher stopped on its own) and only the completion is scored: the student learns to answer as the
teacher does, not to write prompts. Without one, the recipe's data texts are used whole.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tokenized:
    ids: list[list[int]]
    scored: list[list[int]]  # 1 where token t is predicted and scored (token t, from tokens 0..t-1)
    source: str  # "generated:<artifact>" or "data"
    topk: list | None = None  # per row (ids [n, k], logprobs [n, k]) of the teacher at its n scored positions


def texts(ctx, train_on: str = "auto") -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """(train, eval, source): lists of (context, continuation) pairs; the context is not scored.

    Held-out pairs come from the generated dataset when there is one, whatever the training text."""
    from compress.data import load_dataset
    from compress.errors import StageError

    generated = ctx.of_format("dataset")
    if train_on == "generated" and not generated:
        raise StageError(f"stage {ctx.stage_name}: train_on: generated, but no generate stage ran before it")
    if not generated:
        data = load_dataset(ctx.recipe.data)
        return [("", t) for t in data.train.texts], [("", t) for t in data.eval.texts], "data"
    from compress.stages.generate import read_generated

    artifact = generated[-1]
    rows = read_generated(artifact.path)

    def pairs(split):
        return [(r["prompt_text"], r["completion"] + ("<EOS>" if r["finish"] == "eos" else "")) for r in split]

    if train_on == "data":
        return ([("", t) for t in load_dataset(ctx.recipe.data).train.texts], pairs(rows["eval"]),
                f"data (held out: generated:{artifact.name})")
    return pairs(rows["train"]), pairs(rows["eval"]), f"generated:{artifact.name}"


def human_pairs(ctx) -> list[tuple[str, str]]:
    """The recipe's held-out data texts (human-written, never trained on), as pairs with no context: a second
    quality measure beside the teacher's own held-out completions. Empty when there is no generated dataset
    (the held-out text is the data's already)."""
    from compress.data import load_dataset

    if not ctx.of_format("dataset"):
        return []
    return [("", t) for t in load_dataset(ctx.recipe.data).eval.texts]


def tokenize(tokenizer, pairs: list[tuple[str, str]], max_length: int, source: str) -> Tokenized:
    eos = tokenizer.eos_token or ""
    ids, scored = [], []
    for context, continuation in pairs:
        continuation = continuation.replace("<EOS>", eos)
        head = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        if not context and tokenizer.bos_token_id is not None and _adds_bos(tokenizer):
            head = [tokenizer.bos_token_id]
        tail = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        row = (head + tail)[:max_length]
        mask = ([0] * len(head) + [1] * len(tail))[:max_length]
        if len(row) < 2 or sum(mask[1:]) == 0:
            continue
        mask[0] = 0  # the first token has no context to be predicted from
        ids.append(row)
        scored.append(mask)
    return Tokenized(ids, scored, source)


def _adds_bos(tokenizer) -> bool:
    probe = tokenizer("a")["input_ids"]
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def pad_batch(tok: Tokenized, index: list[int], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and the scored mask, as torch tensors."""
    import torch

    width = max(len(tok.ids[i]) for i in index)
    out = {name: torch.zeros((len(index), width), dtype=torch.long) for name in ("input_ids", "attention_mask", "scored")}
    out["input_ids"].fill_(pad_id or 0)
    for r, i in enumerate(index):
        n = len(tok.ids[i])
        out["input_ids"][r, :n] = torch.tensor(tok.ids[i])
        out["attention_mask"][r, :n] = 1
        out["scored"][r, :n] = torch.tensor(tok.scored[i])
    if tok.topk is not None:  # the teacher's distribution of token t sits at position t, like `scored`
        k = tok.topk[index[0]][0].shape[1]
        out["topk_ids"] = torch.zeros((len(index), width, k), dtype=torch.long)
        out["topk_logp"] = torch.zeros((len(index), width, k), dtype=torch.float32)
        for r, i in enumerate(index):
            where = out["scored"][r].bool()
            out["topk_ids"][r, where] = torch.from_numpy(tok.topk[i][0]).long()
            out["topk_logp"][r, where] = torch.from_numpy(tok.topk[i][1])
    return out


def model_stats(model, tok: Tokenized, pad_id: int, batch_size: int = 8):
    """Per sequence (argmax, nll) arrays of a torch causal LM, aligned so position t is the prediction of
    token t (from tokens before it); position 0 is never scored. Only the scored positions are computed (the
    output projection is a fifth of a small model's forward pass, and prompts are most positions): the others
    hold 0, and every caller reads these arrays through scored_mask."""
    import numpy as np
    import torch

    was_training = model.training
    model.eval()
    order = sorted(range(len(tok.ids)), key=lambda i: len(tok.ids[i]))
    results: dict[int, tuple] = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            batch = pad_batch(tok, index, pad_id)
            keep = batch["scored"][:, 1:].bool()  # position t predicts token t + 1
            logp = torch.log_softmax(logits_at(model, batch["input_ids"], batch["attention_mask"], keep).float(), -1)
            argmax = torch.zeros(keep.shape, dtype=torch.long)
            nll = torch.zeros(keep.shape, dtype=torch.float32)
            argmax[keep] = logp.argmax(-1)
            nll[keep] = -logp.gather(-1, batch["input_ids"][:, 1:][keep].unsqueeze(-1)).squeeze(-1)
            for r, i in enumerate(index):
                n = len(tok.ids[i])
                # index t of these arrays describes token t: the prediction made at position t - 1
                results[i] = (np.concatenate([[0], argmax[r, :n - 1].numpy()]),
                              np.concatenate([[0.0], nll[r, :n - 1].numpy()]).astype(np.float32))
    model.train(was_training)
    argmaxes = [results[i][0] for i in range(len(tok.ids))]
    nlls = [results[i][1] for i in range(len(tok.ids))]
    return np.concatenate(argmaxes) if argmaxes else np.zeros(0), np.concatenate(nlls) if nlls else np.zeros(0)


MIN_SHARED = 4  # shorter shared prefixes are not worth a second call of the model


def logits_at(net, input_ids, attention_mask, keep, min_shared: int = MIN_SHARED):
    """The model's next-token logits at the positions `keep` [B, S-1] marks (position t predicts token t+1):
    the output projection runs only there (Llama-style models; others compute all logits, then pick). A prefix
    every row shares runs once, its keys and values shared by the rows (the same values and gradients: the
    prompt template is a quarter of the tokens of recipes/smollm2-distill.yaml's training sequences); shorter
    prefixes than `min_shared` are not worth the second call."""
    import torch

    base = getattr(net, net.base_model_prefix, None)
    plain = base is not None and not any(getattr(net.config, a, None) for a in ("final_logit_softcapping", "logit_scale"))
    if not plain:
        return net(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][keep]
    shared = shared_columns(input_ids, attention_mask)
    if shared < min_shared:
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    else:  # the batch's common prefix (chat template, system message, prompt template) runs once, not per row
        head = base(input_ids=input_ids[:1, :shared], use_cache=True)
        cache = head.past_key_values
        cache.batch_repeat_interleave(input_ids.shape[0])
        positions = torch.arange(shared, input_ids.shape[1]).expand(input_ids.shape[0], -1)
        tail = base(input_ids=input_ids[:, shared:], attention_mask=attention_mask, position_ids=positions,
                    past_key_values=cache, use_cache=True).last_hidden_state
        hidden = torch.cat([head.last_hidden_state.expand(input_ids.shape[0], -1, -1), tail], 1)
    return net.get_output_embeddings()(hidden[:, :-1][keep])


def shared_columns(input_ids, attention_mask) -> int:
    """Leading positions where every row of a batch holds the same real token (at most all but the last)."""
    import torch

    if input_ids.shape[0] < 2:
        return 0
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(0)
    return min(int(torch.cumprod(same.int(), 0).sum()), input_ids.shape[1] - 1)


def scored_mask(tok: Tokenized):
    import numpy as np

    return np.concatenate([np.asarray(m, dtype=bool) for m in tok.scored]) if tok.scored else np.zeros(0, bool)
