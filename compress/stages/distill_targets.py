"""What a distillation learns from: the training texts (with data.unlabeled's) and the teacher's outputs on them,
computed once per text set and cached machine-wide."""

from __future__ import annotations

from compress.training import progress_bar

UNLABELED = -100  # the class id of a data.unlabeled text: cross-entropy's ignore_index


def with_unlabeled(data):
    """The data with data.unlabeled's texts joined to the training split: the teacher's outputs are their targets;
    where the split has labels, theirs is UNLABELED (the hard-label loss skips them)."""
    extra = getattr(data, "unlabeled", None)
    if not extra:
        return data
    from dataclasses import replace

    from compress.data import Split

    labels = data.train.labels + [UNLABELED] * len(extra) if data.train.labels is not None else None
    return replace(data, train=Split(data.train.texts + extra, labels))


def cached_teacher_outputs(ctx, task, teacher, net, data, max_length: int) -> tuple[dict, bool]:
    """The teacher's outputs on the train and eval texts, each split read from the machine-wide cache
    (compress/teacher_cache.py: keyed by teacher, task, texts and max_length) when computed before by any
    recipe or sweep variant. Returns (outputs, whether every split came from the cache)."""
    from compress import ranks as D
    from compress import teacher_cache

    out, hits, model, inputs = {}, [], None, None
    for name, split in (("train", data.train), ("eval", data.eval)):
        texts = task.examples(split)
        key = teacher_cache.key(teacher.sha256, task.NAME, max_length, texts)
        found = teacher_cache.load(key, len(texts))
        if D.broadcast_object(found is not None):
            out[name] = found if found is not None else teacher_cache.load(key, len(texts))
            hits.append(True)
            continue
        if model is None:
            model, inputs = task.wrap(net, teacher.path), task.inputs(teacher.path)
        out[name] = teacher_outputs(model, inputs, texts, max_length, ctx)
        hits.append(False)
        if ctx.is_main_process:
            teacher_cache.save(key, out[name])
    return out, all(hits)


def teacher_outputs(model, inputs, texts, max_length: int, ctx, batch_size: int = 64):
    """Outputs for `texts` (the examples) in their order, fed by the task's input hook `inputs`; batches
    sorted by length (little padding), split over ranks."""
    import numpy as np
    import torch

    from compress import ranks as D

    rank, world = D.rank_world()
    todo = inputs.batches(texts, max_length, batch_size)
    mine, outs = todo[rank::world], []
    with torch.inference_mode(), progress_bar(ctx, f"teacher outputs ({len(texts)} texts)", len(mine), unit="batch") as tick:
        for batch in mine:
            args = (torch.from_numpy(batch[k]).to(D.device()) for k in inputs.names)
            outs.append((batch["_index"], model(*args).float().cpu().numpy()))
            tick()
    pieces = [p for part in D.gather_objects(outs) for p in part]
    result = np.empty((len(texts), pieces[0][1].shape[1]), dtype=np.float32)
    for index, values in pieces:
        result[index] = values
    return result
