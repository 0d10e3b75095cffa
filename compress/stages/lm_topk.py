"""The teacher's next-token distributions as top-k (token ids + log-probabilities), kept while it generates.

When the generate stage samples a completion, the logits of each generation step ARE the teacher's next-token
distribution at that position, so token-level distillation can learn from them without running the teacher
again: the generate stage keeps the top `top_k` of every step (raw logits, before temperature and top-p) and
writes them beside the text as `topk.npz` (row ids, offsets, ids int32 [tokens, k], logprobs float16
[tokens, k]). Row i's distributions are those of its completion tokens, plus the step that chose the end token
when the teacher stopped on its own; the completion's token ids (end token included) are kept in data.jsonl
(`completion_ids`) so the student trains on exactly the tokens the distributions belong to.

The distill stage (lm_distill.py) turns them into a KL over the top-k tokens plus one "any other token"
outcome, at temperature T (sparse_kl).
"""

from __future__ import annotations

from pathlib import Path

FILE = "topk.npz"


def capture(step_logits, k: int) -> tuple:
    """(ids [B, steps, k] int32, logprobs [B, steps, k] float32) from generate's per-step raw logits."""
    import torch

    logp = torch.log_softmax(torch.stack(step_logits, 1).float(), -1)
    top = torch.topk(logp, k, dim=-1)
    return top.indices.to(torch.int32), top.values


def row_record(ids, logp, steps: int) -> dict:
    """The first `steps` distributions of one row, as JSON-friendly lists (logprobs to 3 decimals)."""
    return {"topk_ids": ids[:steps].tolist(), "topk_logprobs": [[round(v, 3) for v in r] for r in logp[:steps].tolist()]}


def write(folder: Path, rows: list[dict]) -> dict:
    """Move the rows' top-k lists into folder/topk.npz (removing them from the rows); a summary for provenance."""
    import numpy as np

    kept = [r for r in rows if "topk_ids" in r]
    if not kept:
        return {}
    k = len(kept[0]["topk_ids"][0])
    ids = np.concatenate([np.asarray(r["topk_ids"], np.int32).reshape(-1, k) for r in kept])
    logp = np.concatenate([np.asarray(r["topk_logprobs"], np.float32).reshape(-1, k) for r in kept])
    offsets = np.cumsum([0] + [len(r["topk_ids"]) for r in kept])
    np.savez(folder / FILE, row_ids=np.asarray([r["id"] for r in kept], np.int64), offsets=offsets,
             ids=ids, logprobs=logp.astype(np.float16))
    for row in rows:
        row.pop("topk_ids", None)
        row.pop("topk_logprobs", None)
    return {"k": int(ids.shape[1]), "positions": int(ids.shape[0]),
            "mean_mass": round(float(np.exp(logp.astype(np.float64)).sum(1).mean()), 4)}


def read(folder: Path) -> dict[int, tuple] | None:
    """{row id: (ids [n, k], logprobs [n, k])} of a generated dataset, or None when it has no top-k."""
    import numpy as np

    path = Path(folder) / FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        offsets, ids, logp = data["offsets"], data["ids"], data["logprobs"].astype(np.float32)
        return {int(r): (ids[offsets[i]:offsets[i + 1]], logp[offsets[i]:offsets[i + 1]])
                for i, r in enumerate(data["row_ids"])}


def sparse_kl(student_logits, topk_ids, topk_logp, temperature: float):
    """Mean over positions of KL(teacher || student) over k + 1 outcomes (the teacher's top-k tokens and "any
    other token"), both softened at temperature T, times T^2 (Hinton's gradient scale). Exact for the student;
    the teacher's other tokens, whose logits were not kept, are taken as sharing their mass evenly (exact at
    T = 1). A student equal to the teacher scores 0 at T = 1."""
    import math

    import torch

    t, k = temperature, topk_ids.shape[-1]
    rest = student_logits.shape[-1] - k
    logp = topk_logp.float()
    tail = (1 - logp.exp().sum(-1, keepdim=True)).clamp_min(1e-8)
    teacher = torch.log_softmax(torch.cat([logp / t, math.log(rest) + (tail.log() - math.log(rest)) / t], -1), -1)
    top = torch.log_softmax(student_logits.float() / t, -1).gather(-1, topk_ids.long())
    other = torch.log1p(-top.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-6))
    student = torch.cat([top, other], -1)
    return (teacher.exp() * (teacher - student)).sum(-1).mean() * t * t


def tokenize(tokenizer, rows: list[dict], topk: dict[int, tuple], max_length: int, source: str):
    """Training sequences prompt + the teacher's own completion tokens (+ its end token), scored on the
    completion, with the teacher's top-k at every scored position; rows without top-k are left out."""
    from compress.stages.lm_text import Tokenized

    out = Tokenized([], [], source, [])
    for row in rows:
        if row["id"] not in topk or "completion_ids" not in row:
            continue
        ids, logp = topk[row["id"]]
        head = tokenizer(row["prompt_text"], add_special_tokens=False)["input_ids"]
        tail = row["completion_ids"]
        if len(tail) != len(ids) or not head:
            continue
        n = min(len(tail), max_length - len(head))
        if n < 1:
            continue
        out.ids.append(head + tail[:n])
        out.scored.append([0] * len(head) + [1] * n)
        out.topk.append((ids[:n], logp[:n]))
    return out
