"""Stage distill for task causal-lm: a student built from some of the teacher's layers learns its text.

Losses (distill's `loss` / `losses`):
- sequence: next-token cross-entropy on the teacher's generated completions (sequence-level distillation);
- token-kl: KL(teacher || student) of the next-token distributions at the same positions, temperature
  `temperature` (token-level distillation): against the teacher's top-k that the generate stage kept while it
  wrote the text (kl_targets cached: no teacher in the loop; stages/lm_topk.py), or against the full
  distributions of the teacher run in the loop (online).
The student can be the teacher's most important layers (student.from_teacher.layers auto, stages/layer_choice.py).
Logits are computed only at the scored positions (the completion), which saves most of the output projection.
Evaluation: perplexity and teacher agreement on the held-out completions (compress/tasks/causal_lm.py);
the teacher's greedy tokens there are computed once. The training loop is compress/training.py's.
"""

from __future__ import annotations

import time

from compress.errors import StageError
from compress.training import Job, checkpoint_key, param_count, train

LM_LOSSES = ("sequence", "token-kl")
EVAL_LIMIT = 400  # held-out sequences scored at each evaluation: enough for a stable perplexity, quick on CPU


def run(cfg, ctx) -> list:
    import torch

    from compress import ranks as D
    from compress.stages import lm_text as text
    from compress.stages.distill import build_student
    from compress.tasks import causal_lm

    task, trust = ctx.task, ctx.recipe.teacher.trust_remote_code
    teacher = ctx.teacher()
    losses = dict(cfg.losses or {cfg.loss or task.DEFAULT_LOSS: 1.0})
    wrong = [name for name in losses if name not in LM_LOSSES]
    if wrong:
        raise StageError(f"loss {wrong[0]} does not apply to task causal-lm (use {' or '.join(LM_LOSSES)})")
    teacher_net = causal_lm.load_backbone(teacher.path, trust).to(D.device()).eval()
    tokenizer = causal_lm.load_tokenizer(teacher.path, trust)
    max_length = cfg.max_length or ctx.recipe.data.max_length
    train_pairs, eval_pairs, source = text.texts(ctx, cfg.train_on)
    train_tok = _train_tokens(cfg, ctx, tokenizer, train_pairs, max_length, source, losses)
    eval_tok = text.tokenize(tokenizer, eval_pairs[:EVAL_LIMIT], max_length, source)
    if not train_tok.ids or not eval_tok.ids:
        raise StageError(f"stage {ctx.stage_name}: no training or held-out text to distill on ({source})")
    started = time.monotonic()
    spec = cfg.student
    if spec.from_teacher and spec.from_teacher.layers == "auto":
        from compress.stages.layer_choice import auto_layers

        layers, ctx.metrics["layer_choice"] = auto_layers(teacher_net, train_tok, tokenizer.pad_token_id,
                                                          spec.from_teacher.keep)
        ctx.console.print(f"  layers kept (most important on the teacher's outputs): {layers}")
        spec = spec.model_copy(update={"from_teacher": spec.from_teacher.model_copy(update={"layers": layers,
                                                                                          "keep": None})})
    torch.manual_seed(cfg.seed)
    student_net, _, _ = build_student(spec, task, teacher.path, teacher_net, trust)
    if cfg.freeze_embeddings if cfg.freeze_embeddings is not None else bool(spec.from_teacher):
        student_net.get_input_embeddings().weight.requires_grad_(False)
    reference, teacher_nll = text.model_stats(teacher_net, eval_tok, tokenizer.pad_token_id)
    mask = text.scored_mask(eval_tok)
    ctx.metrics.update(teacher_params=param_count(teacher_net), student_params=param_count(student_net),
                       teacher_layers=teacher_net.config.num_hidden_layers,
                       student_layers=student_net.config.num_hidden_layers, losses=losses, data=source,
                       train_sequences=len(train_tok.ids), eval_sequences=len(eval_tok.ids),
                       kl_targets=("cached top-k" if train_tok.topk is not None else "online")
                       if "token-kl" in losses else None,
                       precompute_seconds=round(time.monotonic() - started, 2))
    teacher_eval = causal_lm.score(reference, teacher_nll, mask, reference)
    ctx.metrics["teacher_quality"] = teacher_eval
    ctx.console.print(f"  teacher on held-out text: perplexity {teacher_eval['perplexity']:.2f}")
    if "token-kl" not in losses or train_tok.topk is not None:
        del teacher_net
        teacher_net = None
    module = distiller_module(student_net, teacher_net, losses, cfg.temperature)

    def evaluate() -> dict:
        argmax, nll = text.model_stats(student_net, eval_tok, tokenizer.pad_token_id)
        return causal_lm.score(argmax, nll, mask, reference)

    job = Job(module=module, student=student_net, lengths=[len(x) for x in train_tok.ids],
              collate=lambda index: text.pad_batch(train_tok, index, tokenizer.pad_token_id), evaluate=evaluate,
              headline=task.HEADLINE, key=checkpoint_key(cfg, teacher, ctx.recipe.data, data=source))
    ctx.metrics.update(train(cfg, ctx, job))
    if not ctx.is_main_process:
        return []
    meta = {"role": "student", "params": ctx.metrics["student_params"], "teacher": teacher.name,
            "quality": ctx.metrics["quality_after"]}

    def write(tmp) -> None:
        tmp.mkdir()
        tokenizer.save_pretrained(tmp)
        student_net.save_pretrained(tmp)

    return [ctx.save("student", "hf-model", write, meta)]


def _train_tokens(cfg, ctx, tokenizer, pairs, max_length: int, source: str, losses: dict):
    """The training sequences; with token-kl and cached targets, the teacher's own tokens with its top-k."""
    from compress.stages import lm_text as text
    from compress.stages import lm_topk

    generated = ctx.of_format("dataset")
    kept = lm_topk.read(generated[-1].path) if generated and "token-kl" in losses and cfg.train_on != "data" else None
    if cfg.kl_targets == "cached" and kept is None and "token-kl" in losses:
        raise StageError(f"stage {ctx.stage_name}: kl_targets cached, but no generate stage kept the teacher's top-k "
                         "(give it top_k, e.g. 32)")
    if kept is None or cfg.kl_targets == "online":
        return text.tokenize(tokenizer, pairs, max_length, source)
    from compress.stages.generate import read_generated

    return lm_topk.tokenize(tokenizer, read_generated(generated[-1].path)["train"], kept, max_length, source)


def distiller_module(student, teacher, losses: dict, temperature: float):
    import torch
    import torch.nn.functional as F

    from compress.stages import lm_topk
    from compress.stages.lm_text import logits_at

    class Distiller(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            object.__setattr__(self, "teacher", teacher)  # not a submodule: out of the optimizer and checkpoints

        def forward(self, input_ids, attention_mask, scored, topk_ids=None, topk_logp=None):
            keep = scored[:, 1:].bool()  # position t predicts token t+1
            picked = logits_at(self.student, input_ids, attention_mask, keep)
            total = 0.0
            if "sequence" in losses:
                total = total + losses["sequence"] * F.cross_entropy(picked.float(), input_ids[:, 1:][keep])
            if "token-kl" in losses and topk_ids is not None:
                total = total + losses["token-kl"] * lm_topk.sparse_kl(picked, topk_ids[:, 1:][keep],
                                                                       topk_logp[:, 1:][keep], temperature)
            elif "token-kl" in losses:
                with torch.no_grad(), torch.autocast(input_ids.device.type, enabled=False):  # fp32 targets
                    ref = logits_at(self.teacher, input_ids, attention_mask, keep)
                t = temperature
                kl = F.kl_div(F.log_softmax(picked.float() / t, -1), F.log_softmax(ref.float() / t, -1),
                              reduction="batchmean", log_target=True) * t * t
                total = total + losses["token-kl"] * kl
            return total

    return Distiller()
