"""Token-level distillation variants of SmolLM2's student, trained side by side for the same wall-clock budget.

Reads the teacher's completions (with top-k) from a generate stage's progress file or artifact, holds out the
lowest ids (as the generate stage does), and trains one variant per process (1 thread each, started together so
that they share the machine's load equally); prints one JSON line per variant: steps, perplexity and agreement on
the held-out completions. Development measurement for bench/results/2026-12-07-x86_64-2cpu-llm-kd.md:

    python -m bench.lm_kd_variants RUN_DIR --minutes 6 --eval 50
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from pathlib import Path

STRIDE = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 29]
VARIANTS = {
    "seq-stride": {"losses": {"sequence": 1.0}, "layers": STRIDE},
    "seq-auto": {"losses": {"sequence": 1.0}, "layers": "auto"},
    "seq+kl-cached-auto": {"losses": {"sequence": 1.0, "token-kl": 1.0}, "layers": "auto", "targets": "cached"},
    "seq+kl-online-auto": {"losses": {"sequence": 1.0, "token-kl": 1.0}, "layers": "auto", "targets": "online"},
    "kl-cached-auto": {"losses": {"token-kl": 1.0}, "layers": "auto", "targets": "cached"},
    "seq+kl-cached-auto-embeddings": {"losses": {"sequence": 1.0, "token-kl": 1.0}, "layers": "auto",
                                      "targets": "cached", "train_embeddings": True},
}


def rows_of(run_dir: Path) -> list[dict]:
    data = run_dir / "artifacts" / "generated" / "data.jsonl"
    if data.is_file():  # a finished generate stage: its rows, the held-out split first, top-k from topk.npz
        from compress.stages import lm_topk

        kept = lm_topk.read(data.parent)
        rows = [json.loads(line) for line in open(data, encoding="utf-8")]
        for row in rows:
            if row["id"] in kept:
                row["topk_ids"], row["topk_logprobs"] = kept[row["id"]]
        return sorted(rows, key=lambda r: (r.get("split") != "eval", r["id"]))
    files = glob.glob(str(run_dir / "work" / "generate" / "progress.jsonl.*"))
    rows = [r for f in files for line in open(f) for r in json.loads(line)["rows"]]
    return sorted(rows, key=lambda r: r["id"])


def one(args, name: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from compress.stages import lm_text, lm_topk
    from compress.stages.distill import build_student
    from compress.stages.layer_choice import FromTeacher
    from compress.stages.lm_distill import distiller_module
    from compress.tasks.causal_lm import load_backbone, load_tokenizer, score

    spec = VARIANTS[name]
    teacher_dir = args.run_dir / "artifacts" / "teacher"
    teacher, tokenizer = load_backbone(teacher_dir).eval(), load_tokenizer(teacher_dir)
    rows = rows_of(args.run_dir)
    held, train_rows = rows[:args.eval], rows[args.eval:]
    train_rows = train_rows[:args.train_limit] if args.train_limit else train_rows  # fewer completions generated
    topk = {r["id"]: (np.asarray(r["topk_ids"]), np.asarray(r["topk_logprobs"], np.float32)) for r in train_rows}
    train = lm_topk.tokenize(tokenizer, train_rows, topk, 160, "progress")
    pairs = [(r["prompt_text"], r["completion"] + (tokenizer.eos_token if r["finish"] == "eos" else "")) for r in held]
    held_tok = lm_text.tokenize(tokenizer, pairs, 160, "progress")
    reference, _ = lm_text.model_stats(teacher, held_tok, tokenizer.pad_token_id)
    mask = lm_text.scored_mask(held_tok)
    layers = args.auto_layers if spec["layers"] == "auto" else spec["layers"]
    holder = type("Spec", (), {"from_teacher": FromTeacher(layers=layers)})()
    student = build_student(holder, None, teacher_dir, teacher, False)[0]
    student.get_input_embeddings().weight.requires_grad_(bool(spec.get("train_embeddings")))
    online = spec.get("targets") == "online"
    module = distiller_module(student, teacher if online else None, spec["losses"], args.temperature)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    order = np.random.default_rng(0).permutation(len(train.ids)).tolist()
    budget, start, step, cpu = args.minutes * 60, time.monotonic(), 0, time.process_time()
    student.train()
    while args.steps != 0 and (progress := (step / args.steps if args.steps is not None else (time.monotonic() - start) / budget)) < 1:
        index = [order[(step * args.batch + i) % len(order)] for i in range(args.batch)]
        batch = lm_text.pad_batch(train, index, tokenizer.pad_token_id)
        if online or "token-kl" not in spec["losses"]:
            batch = {k: v for k, v in batch.items() if not k.startswith("topk")}
        factor = (progress + 1e-3) / 0.05 if progress < 0.05 else 1 - (progress - 0.05) / 0.95
        for group in optimizer.param_groups:
            group["lr"] = args.lr * factor
        loss = module(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    cpu = time.process_time() - cpu
    argmax, nll = lm_text.model_stats(student, held_tok, tokenizer.pad_token_id)
    quality = score(argmax, nll, mask, reference)
    return {"variant": name, "layers": layers, "steps": step, "train_cpu_s": round(cpu, 1),
            "cpu_s_per_step": round(cpu / max(step, 1), 2), "wall_s": round(time.monotonic() - start, 1), "train_sequences": len(train.ids),
            "eval_sequences": len(held_tok.ids), "perplexity": round(quality["perplexity"], 3),
            "agreement": round(quality["agreement"], 4), "loadavg_end": open("/proc/loadavg").read().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--eval", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--auto-layers", type=json.loads, default=None, help="the layers auto chose, as JSON")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of --minutes")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N training completions")
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(one(args, args.only)), flush=True)
        return
    procs = [subprocess.Popen([sys.executable, "-m", "bench.lm_kd_variants", *sys.argv[1:], "--only", name])
             for name in args.variants.split(",")]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
