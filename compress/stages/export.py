"""Stage export: Hugging Face model (or a Python factory's model) -> ONNX bundle (model.onnx + tokenizer +
compress.json).

Uses torch.onnx's TorchScript exporter at opset 17: the dynamo exporter is 4-7x slower here, needs
onnxscript, and its graph is not fused by onnxruntime's transformer optimizer (shared/onnx-notes.md).
The task's input hook (tasks/common.py) gives the inputs: their names, dynamic axes and a sample to trace with.
Parity with torch is checked in a fresh process on real eval examples, and recorded.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.errors import StageError
from compress.schema_base import StageBase
from compress.stages.parity import ParityChecker


class Config(StageBase):
    consumes = ("hf-model",)
    produces = ("onnx",)

    kind: Literal["export"] = "export"
    models: list[str] | None = Field(
        default=None, description="Names of the hf-model artifacts to export (default: all, e.g. teacher and student)."
    )
    opset: int = Field(default=17, ge=13, le=21, description="ONNX opset version.")
    optimize: bool = Field(
        default=True, description="Apply onnxruntime's transformer fusions (attention, layer norm, GELU); Hugging Face "
        "models only."
    )
    parity_max_abs: float = Field(
        default=1e-3, gt=0, description="Fail when an output differs from torch by more than this."
    )
    parity_texts: int = Field(default=64, ge=1, description="Held-out examples (texts, images) used for the parity "
                              "check.")
    genai: bool = Field(
        default=False, description="Task causal-lm: also export each model in onnxruntime-genai's format "
        "(<name>.genai.onnx: GroupQueryAttention over a key/value buffer shared between steps, genai_config.json; "
        "onnxruntime_genai.Model loads the folder, and bench times generation through it). quantize's int4-weight "
        "quantizes it like the other export. Needs onnxruntime-genai (compress[llm]).")


def run(cfg: Config, ctx) -> list:
    if cfg.genai:
        raise StageError(f"stage {ctx.stage_name}: genai: true is for task causal-lm (onnxruntime-genai's format is a "
                         f"text generator's), not {ctx.recipe.task}")
    # Started at the first check, not with the stage: started early, a Ctrl-C during the first export once ended
    # the run with the bare signal (exit -2) instead of its one line (a loaded 2-core CI machine; not reproduced).
    with ParityChecker() as checker:
        return [_export_one(cfg, ctx, source, checker) for source in ctx.of_format("hf-model", cfg.models)]


def _export_one(cfg: Config, ctx, source, checker: ParityChecker):
    from compress import static

    name = f"{source.name}.onnx"
    meta: dict = {}
    write = _export_static if static.is_static(source.path) else _export
    artifact = ctx.save(name, "onnx", lambda tmp: write(cfg, ctx, source, tmp, meta, checker))
    ctx.metrics[name] = meta
    ctx.console.print(
        f"  exported {source.name} -> {name}: parity max|diff| {meta['parity_max_abs']:.2e}, "
        f"cosine {meta['parity_cosine']:.6f}"
    )
    return _with_meta(artifact, source, meta)


def _with_meta(artifact, source, meta: dict):
    from dataclasses import replace

    return replace(artifact, metadata={"source": source.name, "precision": "fp32", "role": source.metadata.get("role", source.name), **meta})


def _export(cfg: Config, ctx, source, tmp: Path, meta: dict, checker: ParityChecker) -> None:
    import torch

    from compress.tasks.common import align_max_length, copy_bundle_files, write_json

    task = ctx.task
    tmp.mkdir()
    examples = _eval_examples(ctx, cfg.parity_texts, source.path)  # first: labels the model cannot have stop here
    extra = getattr(task, "EXTRA_OUTPUTS", {})  # e.g. sentence-embedding's last_hidden_state, for the clients
    load = task.export_model if extra else task.load_model
    model = load(source.path, ctx.recipe.teacher.trust_remote_code)
    _check_finite_weights(model, source.name)
    inputs = task.inputs(source.path)
    sample = inputs.sample(examples)
    args = tuple(torch.from_numpy(sample[n]) for n in task.INPUT_NAMES)
    raw = tmp / "model.onnx"
    dynamic = {n: inputs.axes for n in task.INPUT_NAMES} | {task.OUTPUT_NAME: {0: "batch"}} | extra
    # The TorchScript exporter is deprecated but fuses fully; its tracer warnings are expected noise.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(raw), input_names=list(task.INPUT_NAMES), output_names=[task.OUTPUT_NAME, *extra],
            dynamic_axes=dynamic, opset_version=cfg.opset, dynamo=False,
        )
    if cfg.optimize and (source.path / "config.json").is_file():  # transformer fusions: HF models only
        meta["fusions"] = _optimize(raw, source.path)
    copy_bundle_files(source.path, tmp)
    # One max length in every config file (tokenizer.json, tokenizer_config.json, sentence_bert_config.json, here).
    max_length = align_max_length(tmp, ctx.recipe.data.max_length, sentence_transformers=bool(extra))
    info = {**task.bundle_info(source.path), "inputs": list(task.INPUT_NAMES),
            "max_length": max_length, "precision": "fp32"}
    if hasattr(task, "preprocessing"):  # e.g. images: size and normalisation the app must apply as training did
        info["preprocessing"] = task.preprocessing(ctx.recipe.data)
    write_json(tmp / "compress.json", info)
    meta.update(_parity(checker, ctx, source.path, tmp, inputs.encode(examples, ctx.recipe.data.max_length)))
    if meta.pop("nonfinite_outputs", 0) or not math.isfinite(meta["parity_max_abs"]):
        raise StageError(f"export of {source.name}: its outputs on the held-out examples hold NaN or infinite "
                         "values (in PyTorch too), so quantize and bench would measure nothing; check the model's "
                         "weights and its training (a diverged distill or finetune, say)")
    if meta["parity_max_abs"] > cfg.parity_max_abs:
        raise StageError(
            f"export of {source.name}: ONNX output differs from torch by {meta['parity_max_abs']:.3g} "
            f"(> parity_max_abs {cfg.parity_max_abs}); try optimize: false or another opset"
        )


def _check_finite_weights(model, name: str) -> None:
    """NaN or infinite weights (a damaged checkpoint, a diverged training) pass the parity check (NaN is never
    more than the limit) and end in onnxruntime's quantizer as an AssertionError: one sentence here instead."""
    import torch

    bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        shown = ", ".join(bad[:2]) + (f" and {len(bad) - 2} more" if len(bad) > 2 else "")
        tensors = (f"{len(bad)} weight tensors of the model hold" if len(bad) > 1
                   else "1 weight tensor of the model holds")
        raise StageError(f"export of {name}: {tensors} NaN or infinite values ({shown}); the checkpoint is damaged "
                         "or its training diverged: use another checkpoint")


def _export_static(cfg: Config, ctx, source, tmp: Path, meta: dict, _checker) -> None:
    """A static student (compress/static.py): its graph is written, not traced; parity is against model2vec's own
    encode of the held-out texts (numpy, no torch: in this process)."""
    from compress import static
    from compress.tasks.common import align_max_length, write_json

    info = static.write_bundle(source.path, tmp, cfg.opset)
    max_length = align_max_length(tmp, ctx.recipe.data.max_length)
    write_json(tmp / "compress.json", {**info, "max_length": max_length, "precision": "fp32"})
    meta.update(static.parity(source.path, tmp, _eval_examples(ctx, cfg.parity_texts, None), max_length))
    if meta["parity_max_abs"] > cfg.parity_max_abs:
        raise StageError(
            f"export of {source.name}: the ONNX static student differs from model2vec's own encode by "
            f"{meta['parity_max_abs']:.3g} (> parity_max_abs {cfg.parity_max_abs}); its teacher's tokenizer does "
            "not tokenize as model2vec's does: report it with the teacher's name")


def _optimize(model_path: Path, source_dir: Path) -> dict:
    """Fuse attention, layer norm and GELU in place; return the fusion counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    hf = json.loads((source_dir / "config.json").read_text())
    model_type = hf.get("model_type", "bert")
    optimized = optimize_model(
        str(model_path), model_type=model_type if model_type in ("bert", "gpt2", "bart") else "bert",
        num_heads=hf.get("num_attention_heads", 0), hidden_size=hf.get("hidden_size", 0), opt_level=1,
    )
    optimized.save_model_to_file(str(model_path))
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def _parity(checker: ParityChecker, ctx, model_dir: Path, bundle: Path, inputs: dict) -> dict:
    """Compare ONNX and torch outputs on `inputs` (real eval examples) in another process (in-process comparisons
    can mislead: shared/onnx-notes.md)."""
    import numpy as np

    inputs_file = bundle.parent / f"{bundle.name}.parity.npz"
    with open(inputs_file, "wb") as handle:
        np.savez(handle, **inputs)
    try:
        return checker.check(ctx.recipe.task, model_dir, bundle, inputs_file)
    finally:
        inputs_file.unlink(missing_ok=True)


def _eval_examples(ctx, n: int, model_dir: Path | None):
    """The first `n` held-out examples (texts, images) of the recipe's data, whose labels (if any) must be classes
    of the model at `model_dir` (tasks/common.py for_model)."""
    from compress.tasks.common import for_model

    task = ctx.task
    return task.examples(for_model(task, task.load_data(ctx.recipe.data), model_dir, ctx.recipe.data.source).eval)[:n]
