"""Width pruning (Minitron-style): keep the attention heads and FFN neurons that matter on the recipe's texts.

Importance is activation magnitude: the mean L2 norm of each head's context vector and the mean absolute value
of each FFN neuron's activation (after GELU), over the real (non-padding) tokens of a sample of the recipe's
training texts, measured through the model being pruned (a layer-selected student carries the teacher's
weights, so this is the teacher's own computation for its kept layers). The top fraction is kept, the kept rows
and columns of the weights are copied, and the result is a normal Hugging Face model: `intermediate_size` shrinks
in its config, removed heads are listed in `pruned_heads` (head_dim stays; transformers re-applies it on load).
Supported: BERT-style encoders (`encoder.layer[i].attention.self`, `.intermediate.dense`, `.output.dense`) and
MPNet's (`attention.attn`); a pruned model that no longer runs (MPNet's relative position bias has one column per
head of the unpruned model, so its heads cannot be pruned) is a one-sentence StageError, never a traceback.
"""

from __future__ import annotations

import copy

from compress.errors import StageError


def keep_count(total: int, fraction: float) -> int:
    """How many of `total` units a kept `fraction` means: at least one, at most all."""
    return max(1, min(total, round(total * fraction)))


def encoder_layers(model) -> list:
    """The transformer blocks of a BERT-style encoder, or a StageError naming what is supported."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    block = layers[0] if layers else None
    if block is None or not all(hasattr(block, a) for a in ("attention", "intermediate", "output")):
        raise StageError(f"width pruning (student.from_teacher ffn/heads) supports BERT-style encoders; "
                         f"{type(model).__name__} has no encoder.layer[i].attention/intermediate/output")
    return list(layers)


def attention_parts(layer) -> tuple:
    """(the self-attention module that knows num_attention_heads, the output projection whose input is the heads'
    concatenated context vectors) of one encoder block: BERT's attention.self / attention.output.dense, MPNet's
    attention.attn / attention.attn.o."""
    attention = layer.attention
    inner = getattr(attention, "self", None) or getattr(attention, "attn", None)
    out = getattr(getattr(attention, "output", None), "dense", None) or getattr(inner, "o", None)
    if inner is None or out is None or not hasattr(inner, "num_attention_heads"):
        raise StageError(f"width pruning: {type(attention).__name__} is not a BERT- or MPNet-style attention block")
    return inner, out


def importance(model, batches: list[dict]) -> tuple[list, list]:
    """Per layer: head scores (num_heads) and FFN neuron scores (intermediate_size), from `batches` of
    input_ids / attention_mask tensors."""
    import torch

    layers = encoder_layers(model)
    parts = [attention_parts(layer) for layer in layers]
    heads = [torch.zeros(inner.num_attention_heads) for inner, _ in parts]
    neurons = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    state: dict = {"mask": None, "tokens": 0.0}

    def head_hook(i):
        def hook(_module, inputs):
            context = inputs[0]  # the output projection's input: (batch, seq, heads * head_dim)
            per_head = context.reshape(*context.shape[:2], parts[i][0].num_attention_heads, -1).norm(dim=-1)
            heads[i] += (per_head * state["mask"]).sum((0, 1))
        return hook

    def ffn_hook(i):
        def hook(_module, _inputs, output):
            neurons[i] += (output.abs() * state["mask"]).sum((0, 1))
        return hook

    handles = [out.register_forward_pre_hook(head_hook(i)) for i, (_, out) in enumerate(parts)]
    handles += [layer.intermediate.register_forward_hook(ffn_hook(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                state["mask"] = batch["attention_mask"].unsqueeze(-1).float()
                state["tokens"] += float(batch["attention_mask"].sum())
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    tokens = max(state["tokens"], 1.0)
    return [h / tokens for h in heads], [n / tokens for n in neurons]


def prune(model, batches: list[dict], heads: float = 1.0, ffn: float = 1.0):
    """A new model keeping the top `heads` fraction of attention heads and `ffn` fraction of FFN neurons in
    every layer (ranked on `batches`), and a record of what was kept for the artifact's metadata."""
    import torch

    layers = encoder_layers(model)
    head_scores, neuron_scores = importance(model, batches)
    n_heads, n_inner = len(head_scores[0]), len(neuron_scores[0])
    keep_h, keep_f = keep_count(n_heads, heads), keep_count(n_inner, ffn)
    kept_neurons = [torch.sort(torch.topk(s, keep_f).indices).values for s in neuron_scores]
    kept_heads = [sorted(torch.topk(s, keep_h).indices.tolist()) for s in head_scores]
    config = copy.deepcopy(model.config)
    config.intermediate_size = keep_f
    state = model.state_dict()
    for i, layer in enumerate(layers):
        index = kept_neurons[i]
        prefix = _prefix(model, layer)
        for name in ("intermediate.dense.weight", "intermediate.dense.bias"):
            state[prefix + name] = state[prefix + name][index].clone()
        state[prefix + "output.dense.weight"] = state[prefix + "output.dense.weight"][:, index].clone()
    config.pruned_heads = {}
    smaller = type(model)(config)
    smaller.load_state_dict(state)
    removed = {i: [h for h in range(n_heads) if h not in kept] for i, kept in enumerate(kept_heads)}
    if any(removed.values()):
        smaller.prune_heads({i: r for i, r in removed.items() if r})
    _check_runs(smaller, batches[0], type(model).__name__)
    smaller.train(model.training)
    record = {"heads": {"kept_per_layer": keep_h, "of": n_heads, "kept": kept_heads},
              "ffn": {"kept_per_layer": keep_f, "of": n_inner},
              "params_before": sum(p.numel() for p in model.parameters()),
              "params_after": sum(p.numel() for p in smaller.parameters())}
    return smaller, record


def _check_runs(model, batch: dict, name: str) -> None:
    """One forward pass of the pruned model: an architecture whose other parts assume the full head count fails
    here, with the reason in one sentence."""
    import torch

    try:
        with torch.inference_mode():
            model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(f"width pruning: the pruned {name} does not run ({first[:200]}); keep its heads "
                         "(student.from_teacher.heads: 1.0) and prune ffn only") from None


def _prefix(model, layer) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name + "."
    raise StageError("width pruning: a layer of the encoder is not among the model's modules")
