"""causal-lm bench: which generations to time beside the row's own, and their numbers per row.

A row of stages/lm_bench.py is one prompt length (seq_lens) of one variant; its latency is greedy decoding of
`new_tokens`. `generation` adds timings in the same harness run (same session, same worker): greedy and/or
sampled decoding (temperature, top-k, top-p with a fixed seed, as llama.cpp and onnxruntime-genai sample), at
more counts of new tokens. Each becomes an entry of the row's `generation` list: time to first token and
tokens per second (medians over every round's samples), with the tokens of row 0 (the same for every run of a
seed). The worker's peak RSS (the row's peak_rss_mb) covers all of them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from compress.schema_base import StrictModel


class Generation(StrictModel):
    decoding: list[Literal["greedy", "sampled"]] = Field(
        default_factory=lambda: ["greedy"], min_length=1, description="Decodings to time: greedy (the row's "
        "latency) and/or sampled (temperature, top_k, top_p, seed below).")
    new_tokens: list[int] = Field(
        default_factory=list, description="More counts of generated tokens to time, beside the stage's "
        "new_tokens (e.g. [128]): each decoding is timed at each count.")
    temperature: float = Field(default=0.8, gt=0, le=10, description="sampled: logits are divided by it.")
    top_k: int = Field(default=40, ge=1, description="sampled: only the k most likely tokens are drawn from.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="sampled: of those, the smallest set whose "
                         "probability reaches top_p (nucleus sampling).")
    seed: int = Field(default=0, ge=0, description="sampled: the random generator's seed; every timed run "
                      "restarts it, so each run samples the same tokens.")

    @field_validator("decoding", "new_tokens")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"a value is listed twice: {values}")
        if any(isinstance(v, int) and not 2 <= v <= 4096 for v in values):
            raise ValueError(f"new token counts must be 2..4096: {values}")
        return values


def counts(cfg) -> list[int]:
    """The stage's new_tokens first (the row's latency), then the others in increasing order."""
    return [cfg.new_tokens] + sorted(set(cfg.generation.new_tokens) - {cfg.new_tokens})


def harness_options(cfg) -> list[str]:
    """The harness's --generate/--decoding/--sampling options for a bench stage's Config."""
    g = cfg.generation
    options = ["--generate", ",".join(str(n) for n in counts(cfg)), "--decoding", ",".join(g.decoding)]
    if "sampled" in g.decoding:
        import json

        options += ["--sampling", json.dumps({"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p,
                                              "seed": g.seed})]
    return options


def modes(results: list[dict]) -> list[dict]:
    """Per (decoding, new tokens): TTFT and ms per token over every ok round's samples, tokens/s at the median."""
    from compress.targets.harness import summarize

    merged: dict[tuple, dict] = {}
    for result in results:
        if result.get("status") != "ok":
            continue
        batch = result.get("batch_size") or 1
        for m in result.get("generation") or []:
            entry = merged.setdefault((m["decoding"], m["new_tokens"]), {
                "decoding": m["decoding"], "new_tokens": m["new_tokens"], "batch": batch, "ttft": [], "per": [],
                "rounds_p50": [], "tokens": m.get("tokens")})
            entry["ttft"] += m["ttft_samples_ms"]
            entry["per"] += m["samples_ms"]
            entry["rounds_p50"].append(m["ms_per_token"]["p50"])
    out = []
    for e in merged.values():
        per = summarize(e["per"], e["batch"])
        out.append({"decoding": e["decoding"], "new_tokens": e["new_tokens"],
                    "ttft_ms": summarize(e["ttft"], 1)["latency_ms"]["p50"], "ms_per_token": per["latency_ms"]["p50"],
                    "tokens_per_s": per["throughput"], "rounds_p50": e["rounds_p50"], "tokens": e["tokens"]})
    return out
