"""A plain PyTorch training loop of the quickstart's student, to show what compress's training loop costs.

    python bench/peers_train.py RUN_DIR [--steps 40] [--warmup 3]

Same student (teacher layers {0, 2, 5}, word embeddings frozen, the task's pooling), same texts, batch size,
max length, optimizer, cosine loss and length-bucketed batches as compress's distill stage, with nothing
else: no evaluation, checkpoints, progress bar or DDP wrapper. Prints one JSON line with samples/s counted
as compress counts them (the optimizer steps alone). The targets are the run's cached teacher outputs when
present (their values do not change the speed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from compress.data import load_dataset
    from compress.recipe import load_recipe
    from compress.sources import resolve_model
    from compress.stages.distill import build_student
    from compress.tasks import sentence_embedding as task
    from compress.tasks.common import load_tokenizer, pad

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    resolved = args.run_dir / "recipe.resolved.yaml"  # the recipe that made the run, overrides included
    recipe = load_recipe(resolved if resolved.is_file() else args.recipe)
    distill = next(s for s in recipe.stages if s.kind == "distill")
    data = load_dataset(recipe.data)
    teacher_dir = resolve_model(recipe.teacher.source)
    torch.manual_seed(0)
    teacher = task.load_backbone(teacher_dir)
    student, folder, _ = build_student(distill.student, task, teacher_dir, teacher, False)
    del teacher
    student.get_input_embeddings().weight.requires_grad_(False)
    model = task.wrap(student, folder).train()
    tokenizer = load_tokenizer(folder)
    max_length = distill.max_length or recipe.data.max_length
    ids = tokenizer(data.train.texts, truncation=True, max_length=max_length)["input_ids"]
    cached = sorted((args.run_dir / "work" / "distill").glob("targets-*.npz"))
    targets, source = None, "random"
    if cached:
        with np.load(cached[-1]) as saved:
            if len(saved["train"]) == len(ids):
                targets, source = torch.from_numpy(saved["train"]), "the run's cached teacher outputs"
    if targets is None:
        targets = F.normalize(torch.randn(len(ids), student.config.hidden_size), dim=1)
    # Length-bucketed batches as compress makes them: a seeded shuffle, sorted inside windows of 50 batches.
    order = np.random.default_rng(distill.seed).permutation(len(ids)).tolist()
    size, buckets = distill.batch_size, []
    for start in range(0, len(order), size * 50):
        part = sorted(order[start:start + size * 50], key=lambda i: len(ids[i]))
        buckets += [part[i:i + size] for i in range(0, len(part), size) if len(part[i:i + size]) == size]
    # ... visited in a shuffled order, as compress's sampler does (in order, the first are the shortest texts).
    buckets = [buckets[i] for i in np.random.default_rng(distill.seed).permutation(len(buckets))]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=distill.lr,
                                  weight_decay=distill.weight_decay)
    seconds, samples = 0.0, 0
    for step in range(args.warmup + args.steps):
        index = buckets[step % len(buckets)]
        started = time.monotonic()
        batch = pad(ids, index, tokenizer.pad_token_id)
        loss = 1 - F.cosine_similarity(model(batch["input_ids"], batch["attention_mask"]), targets[index]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            seconds += time.monotonic() - started
            samples += len(index)
    print(json.dumps({"samples_per_s": samples / seconds, "steps": args.steps, "batch_size": size,
                      "seconds": seconds, "threads": torch.get_num_threads(), "targets": source}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
