"""Which teacher layers a depth-pruned student keeps: the recipe's list, or `auto`: the ones that matter most.

`layers: auto` (causal-lm) measures each teacher layer's importance as the KL divergence between the teacher's
next-token distributions and those of the teacher without that one layer, on the scored positions of a few
training sequences (never the held-out ones). The first and the last layer are always kept (the embedding and
the output head are tuned to them); the `keep - 2` others with the highest scores follow, in teacher order.
The scores go into the stage's metrics, so the report says which layers were kept and why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.errors import StageError
from compress.schema_base import StrictModel

SAMPLE = 16  # training sequences the importance is measured on: a stable ranking in about a minute on 2 cores


class FromTeacher(StrictModel):
    layers: list[int] | Literal["auto"] = Field(
        min_length=1, description="Teacher layers to copy into the student, in order; auto (causal-lm): the `keep` "
        "layers whose removal changes the teacher's next-token distributions most (stages/layer_choice.py).")
    keep: int | None = Field(default=None, ge=2, description="layers auto: how many layers the student has.")
    ffn: float = Field(default=1.0, gt=0, le=1, description="Share of FFN neurons kept per layer, the most active "
                       "on the recipe's texts (width pruning, compress/pruning.py; 1.0 keeps all).")
    heads: float = Field(default=1.0, gt=0, le=1, description="Share of attention heads kept per layer, the most "
                         "active on the recipe's texts (head_dim stays; 1.0 keeps all).")

    @model_validator(mode="after")
    def _keep_with_auto(self) -> FromTeacher:
        if (self.layers == "auto") != (self.keep is not None):
            raise ValueError("give keep with layers: auto (and only then), e.g. {layers: auto, keep: 15}")
        return self


def importance(teacher, batches: list[dict]) -> list[float]:
    """Per teacher layer: mean KL(teacher || teacher without that layer) over the scored positions of `batches`
    (lm_text.pad_batch dicts). Without layer i the teacher's layers after i continue from the input of layer i,
    which the full forward pass already computed: each variant runs only the layers after its gap (half the work
    of running every variant from the embeddings), where the model takes that input as `inputs_embeds`."""
    import torch

    base = getattr(teacher, teacher.base_model_prefix)
    head, layers = teacher.get_output_embeddings(), base.layers
    was_training = teacher.training
    teacher.eval()

    def logprobs(batch, keep, start=None):
        base.layers = torch.nn.ModuleList(keep)
        given = {"input_ids": batch["input_ids"]} if start is None else {"inputs_embeds": start}
        hidden = base(**given, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        return torch.log_softmax(head(hidden[:, :-1][batch["scored"][:, 1:].bool()]).float(), -1)

    scores = [0.0] * len(layers)
    try:
        with torch.inference_mode():
            for batch in batches:
                base.layers = layers
                out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                           output_hidden_states=True)
                ref = torch.log_softmax(head(out.last_hidden_state[:, :-1][batch["scored"][:, 1:].bool()]).float(), -1)
                inputs = out.hidden_states  # [i]: the input of layer i
                # a model that rescales inputs_embeds (Gemma) would not continue where it stopped: run it whole
                resume = torch.allclose(logprobs(batch, list(layers), inputs[0]), ref, atol=1e-4)
                for i in range(len(layers)):
                    rest = list(layers[i + 1:]) if resume else [m for j, m in enumerate(layers) if j != i]
                    kl = torch.nn.functional.kl_div(logprobs(batch, rest, inputs[i] if resume else None), ref,
                                                    log_target=True, reduction="sum")
                    scores[i] += float(kl)
    finally:
        base.layers = layers
        teacher.train(was_training)
    positions = sum(int(b["scored"][:, 1:].sum()) for b in batches)
    return [s / max(positions, 1) for s in scores]


def choose(scores: list[float], keep: int) -> list[int]:
    """First, last and the `keep - 2` highest-scoring layers between them, in order."""
    last = len(scores) - 1
    if not 2 <= keep <= len(scores):
        raise StageError(f"student.from_teacher.keep {keep}: the teacher has {len(scores)} layers (keep 2..{len(scores)})")
    middle = sorted(range(1, last), key=lambda i: -scores[i])[:keep - 2]
    return sorted({0, last, *middle})


def auto_layers(teacher, tok, pad_id: int, keep: int) -> tuple[list[int], dict]:
    """(the chosen layers, a record for the metrics) from the first SAMPLE sequences of `tok` (lm_text.Tokenized)."""
    from compress.stages.lm_text import pad_batch

    index = list(range(min(SAMPLE, len(tok.ids))))
    batches = [pad_batch(tok, index[s:s + 8], pad_id) for s in range(0, len(index), 8)]
    scores = importance(teacher, batches)
    layers = choose(scores, keep)
    return layers, {"layers": layers, "importance_kl": [round(s, 4) for s in scores], "sequences": len(index),
                    "how": "KL(teacher || teacher without the layer) on training sequences; first and last kept"}
