"""Stage bench: latency, memory and quality of every ONNX variant (and the torch teacher) per provider.

Every measurement runs in its own subprocess (the ONNX ones through targets/harness.py, the file that
also runs on remote devices), so peak RSS is the model's own and one crash does not end the stage.
Variants are interleaved round by round (A B C A B C ...) so that a noisy neighbour hits all of them
alike; samples of all rounds are merged and the per-round medians are kept to show the spread.
Quality is scored once per variant, provider and target against the teacher's PyTorch fp32 outputs.

Providers are checked before anything runs, per target, against what that target's onnxruntime offers
(compress/targets/providers.py); what cannot run becomes a row with status "unavailable" and the reason, or, with
strict_providers (`compress run --strict-providers`), stops the stage. Targets other than `local` run the
same harness over SSH or under QEMU (compress/targets/remote.py); their rows carry the target's name and
whether its timings are emulated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from compress.procs import die_with_parent
from compress.schema_base import StageBase
from compress.stages import bench_engine as engine
from compress.stages.lm_generation import Generation
from compress.targets import providers as registry

ProviderSpec = str | dict[str, dict[str, str | int | float | bool]]


class Config(StageBase):
    consumes = ("onnx",)
    produces = ("bench",)

    kind: Literal["bench"] = "bench"
    providers: list[ProviderSpec] = Field(
        default_factory=lambda: ["cpu"], min_length=1, description="Execution providers to run on: cpu, cuda, "
        "tensorrt, openvino, arm (the CPU provider on an aarch64 host), any onnxruntime provider name, or "
        "{name: {option: value}} with provider options.")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, description="Batch sizes to time.")
    seq_lens: list[int | Literal["data"]] = Field(
        default_factory=lambda: [128], min_length=1, description="Sequence lengths to time: a number of tokens "
        "(real held-out texts padded to exactly that length), or `data`: the held-out texts as they are, cycled "
        "through while timing (up to 64 calls): batch 1 times each text at its own token length, no padding; "
        "batch N groups N texts in order, each group padded to its longest text. Such rows are labelled "
        "`real(med N)` (N: the texts' median token count) and have `sdata` in their id; quality is unchanged.")
    threads: list[int] = Field(default_factory=lambda: [1], min_length=1, description="Intra-op threads (0 = onnxruntime default).")
    inter_op_threads: list[int] = Field(
        default_factory=lambda: [1], min_length=1, description="Inter-op threads (used by the parallel mode).")
    graph_optimization: list[Literal["disable", "basic", "extended", "all"]] = Field(
        default_factory=lambda: ["all"], min_length=1, description="onnxruntime graph optimization levels.")
    execution_mode: list[Literal["sequential", "parallel"]] = Field(
        default_factory=lambda: ["sequential"], min_length=1, description="onnxruntime execution modes.")
    targets: list[str] = Field(
        default_factory=lambda: ["local"], min_length=1, description="Machines to bench on: `local` or names "
        "from the recipe's `targets` (ssh devices, qemu).")
    strict_providers: bool = Field(
        default=False, description="Fail the stage when a requested provider cannot run on a target, instead "
        "of reporting it as unavailable (also `compress run --strict-providers`).")
    io_binding: Literal["auto", "on", "off"] = Field(
        default="auto", description="Keep inputs and outputs on the provider's device while timing (IO binding), "
        "so a GPU number measures the model and not host-device copies; auto: on for GPU providers.")
    new_tokens: int = Field(default=32, ge=2, le=4096, description="causal-lm: tokens generated per timed run "
                            "(greedy, no early stop); seq_lens are then the prompt lengths.")
    generation: Generation = Field(
        default_factory=Generation, description="causal-lm: more generations timed per row beside greedy "
        "new_tokens: sampled decoding, more new-token counts (each row's `generation` list).")
    warmup: int = Field(default=5, ge=0, description="Untimed runs before timing.")
    min_iterations: int = Field(default=20, ge=1, description="Timed runs per round, at least.")
    min_seconds: float = Field(default=1.0, ge=0, description="Timed seconds per round, at least.")
    rounds: int = Field(default=3, ge=1, description="Rounds; variants are interleaved round by round (A B A B).")
    eval_size: int | None = Field(default=None, ge=1, description="Held-out texts for quality (default: data.eval_size).")
    baseline: bool = Field(default=True, description="Time the teacher in PyTorch fp32 as the baseline row.")
    models: list[str] | None = Field(default=None, description="ONNX artifacts to bench (default: all).")
    time_budget_s: float | None = Field(
        default=None, gt=0, description="Total seconds for this stage's measurements. What is not measured in time "
        "is reported as a row with status 'skipped' and the reason; a measurement still running is stopped. Round "
        "1 of every variant comes before round 2 of any, so a short budget still times each variant once.")

    @field_validator("providers")
    @classmethod
    def _parse_providers(cls, specs: list) -> list:
        labels = [registry.parse(spec).request for spec in specs]  # raises a readable ValueError
        if len(set(labels)) != len(labels):
            raise ValueError(f"a provider is listed twice: {labels}")
        return specs

    @field_validator("batch_sizes")
    @classmethod
    def _positive_unique_batches(cls, sizes: list[int]) -> list[int]:
        if any(n < 1 for n in sizes):
            raise ValueError(f"batch sizes must be at least 1: {sizes}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"a batch size is listed twice: {sizes}")
        return sizes

    @field_validator("threads", "inter_op_threads")
    @classmethod
    def _no_negative_threads(cls, counts: list[int]) -> list[int]:
        if any(n < 0 for n in counts):
            raise ValueError(f"thread counts must be 0 (onnxruntime's default) or more: {counts}")
        return counts

    @field_validator("seq_lens")
    @classmethod
    def _positive_unique_lengths(cls, lengths: list) -> list:
        if any(isinstance(n, int) and n < 1 for n in lengths):
            raise ValueError(f"sequence lengths must be at least 1 token: {lengths}")
        if len(set(lengths)) != len(lengths):
            raise ValueError(f"a sequence length is listed twice: {lengths}")
        return lengths

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[str]) -> list[str]:
        if len(set(targets)) != len(targets):
            raise ValueError(f"a target is listed twice: {targets}")
        return targets


def run(cfg: Config, ctx) -> list:
    variants = engine.variants(cfg, ctx)
    cfg = engine.fixed_settings(cfg, ctx, variants)
    targets = engine.open_targets(cfg, ctx)
    try:
        envs = {name: t.environment() for name, t in targets.items()}
        unavailable = engine.check_providers(cfg, envs)
        cells = engine.cells(cfg, variants, targets)
        from compress.tasks.common import for_model

        teacher = ctx.teacher(required=False)
        data = for_model(ctx.task, ctx.task.load_data(ctx.recipe.data), teacher.path if teacher else None,
                         ctx.recipe.data.source)
        examples = ctx.task.examples(data.eval)
        n_eval = min(cfg.eval_size or ctx.recipe.data.eval_size, len(examples))
        inputs = engine.Inputs(ctx.work_dir, examples[:n_eval], ctx.recipe.data.max_length, ctx.task)
        budget, work = engine.Budget(cfg.time_budget_s), engine.measure_dir(ctx.work_dir)

        def measure(cell, want_eval, round_):
            return _measure(cfg, cell, inputs, want_eval, work / f"r{round_}", ctx.recipe.task, budget,
                            targets[cell.target])

        results, eval_out = engine.interleaved(cfg, ctx, cells, unavailable, budget, measure)
    finally:
        for target in targets.values():
            target.close()
    reference = _reference(cfg, ctx, variants, inputs, eval_out, work)
    labels = data.eval.labels[:n_eval] if data.eval.labels else None
    scored = {k: _quality(ctx.task, reference, inputs, variants, k, path, labels) for k, path in eval_out.items()
              if any(v.name == k[0] for v in variants)}
    quality, items = {k: q for k, (q, _) in scored.items()}, {k: i for k, (_, i) in scored.items()}
    # Real-length rows are labelled with the texts' median token count under the first variant's (the teacher's)
    # tokenizer, one label per setting so that every variant's row finds its baseline.
    median = inputs.median_length(variants[0].folder) if engine.DATA in cfg.seq_lens and variants else None
    rows = [engine.row(c, results[c.id], quality, targets[c.target].emulated, median, items) for c in cells]
    engine.check_strict(cfg, rows)
    settings = {**cfg.model_dump(mode="json"), "eval_size": n_eval, "max_length": ctx.recipe.data.max_length,
                "labels": _label_fit(ctx, data, labels),
                **({"real_median_tokens": median, "real_groups_max": engine.REAL_GROUPS}
                   if engine.DATA in cfg.seq_lens else {})}
    return [engine.save_results(ctx, cells, results, rows, envs, targets, settings)]


def _label_fit(ctx, data, labels) -> dict:
    """What the report needs to judge whether the labels fit the model (compress/tasks/quality_basis.py): whether
    the held-out data has labels, its label names, and the teacher's class names."""
    if getattr(ctx.task, "HEADLINE", None) != "accuracy":
        return {}
    teacher = ctx.teacher(required=False)
    try:
        model = (ctx.task.bundle_info(teacher.path).get("labels") or []) if teacher is not None else []
    except (OSError, ValueError, KeyError):  # a folder without the file that names its classes
        model = []
    return {"has_labels": labels is not None, "data": list(getattr(data, "label_names", None) or []),
            "model": list(model)}


def _measure(cfg: Config, cell: engine.Cell, inputs: engine.Inputs, want_eval: bool, work: Path, task: str,
             budget: engine.Budget | None = None, target=None) -> tuple[dict, Path | None]:
    work.mkdir(parents=True, exist_ok=True)
    stem = cell.id.replace("|", "_").replace("@", "at-")
    out, eval_out = work / f"{stem}.json", work / f"{stem}.eval.npz"
    timing = ["--warmup", str(cfg.warmup), "--min-iterations", str(cfg.min_iterations),
              "--min-seconds", str(cfg.min_seconds), "--threads", str(cell.threads)]
    files = {"--inputs": inputs.timing(cell.variant.folder, cell.batch_size, cell.seq_len)}
    if want_eval:
        files["--eval"] = inputs.eval(cell.variant.folder)[0]
    left = budget.left() if budget else None
    timeout = engine.JOB_TIMEOUT_S if left is None else max(0.1, min(engine.JOB_TIMEOUT_S, left))
    try:
        if cell.variant.runtime == "torch":
            from compress.stages import bench_worker

            # Loaded by path: the worker must not depend on every stage of the registry importing cleanly.
            code = ("import sys, importlib.util as u; s = u.spec_from_file_location('bench_worker', sys.argv[1]); "
                    "m = sys.modules['bench_worker'] = u.module_from_spec(s); s.loader.exec_module(m); "
                    "sys.exit(m.torch_worker(sys.argv[2:]))")
            args = [a for flag, path in files.items() for a in (flag, str(path))] + ["--out", str(out)]
            args += ["--eval-out", str(eval_out)] if want_eval else []
            command = [sys.executable, "-c", code, bench_worker.__file__, task, "--model", str(cell.variant.folder), *args, *timing]
            proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=die_with_parent)
        else:
            from compress.targets.remote import LocalTarget

            options = ["--provider", cell.provider, "--inter-threads", str(cell.inter_threads),
                       "--graph-opt", cell.graph_opt, "--execution-mode", cell.execution_mode,
                       "--io-binding", cfg.io_binding, *timing]
            options += ["--provider-options", cell.options] if cell.options else []
            proc = (target or LocalTarget()).run_harness(cell.variant.folder, files, options, out,
                                                         eval_out if want_eval else None, timeout)
    except subprocess.TimeoutExpired:
        if timeout < engine.JOB_TIMEOUT_S:
            return {"status": "skipped", "reason": budget.reason("during this measurement (stopped)")}, None
        return {"status": "error", "reason": f"timed out after {engine.JOB_TIMEOUT_S} s"}, None
    if not out.is_file():
        return {"status": "error", "reason": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}, None
    return json.loads(out.read_text()), eval_out if want_eval else None


def _reference(cfg: Config, ctx, variants, inputs: engine.Inputs, eval_out: dict, work: Path):
    """The teacher's PyTorch fp32 outputs on the eval texts, in text order (None without a teacher)."""
    teacher = ctx.teacher(required=False)  # the fine-tuned one when a finetune stage ran
    if ("teacher", "cpu", "local") not in eval_out and teacher is not None:
        # No timed baseline: run the worker once for its eval outputs only.
        quick = cfg.model_copy(update={"warmup": 0, "min_iterations": 1, "min_seconds": 0.0})
        variant = engine.Variant("teacher", "torch", teacher.path, "teacher", "fp32", None, 0.0)
        cell = engine.Cell(variant, "cpu", 1, cfg.seq_lens[0], 0)
        result, out = _measure(quick, cell, inputs, True, work / "reference", ctx.recipe.task)
        if result["status"] == "ok":
            eval_out[cell.key] = out
        variants = [*variants, variant]
    key = ("teacher", "cpu", "local")
    onnx_teacher = ctx.onnx_teacher() if teacher is None else None
    if onnx_teacher is not None:  # no PyTorch teacher: the fp32 ONNX model given as the teacher is the reference
        key = next((k for k in eval_out if k[0] == onnx_teacher.name and k[2] == "local"
                    and k[1] in ("CPUExecutionProvider", "arm")), None)
        if key is None:
            quick = cfg.model_copy(update={"warmup": 0, "min_iterations": 1, "min_seconds": 0.0})
            variant = engine.Variant(onnx_teacher.name, "onnxruntime", onnx_teacher.path, "teacher", "fp32", None, 0.0)
            cell = engine.Cell(variant, "CPUExecutionProvider", cfg.batch_sizes[0], cfg.seq_lens[0], 0)
            result, out = _measure(quick, cell, inputs, True, work / "reference", ctx.recipe.task)
            key = cell.key
            if result["status"] == "ok":
                eval_out[key] = out
            variants = [*variants, variant]
    if key not in eval_out:
        ctx.console.print("  [yellow]no reference outputs from the teacher: quality not scored[/yellow]")
        return None
    return _outputs(ctx.task, inputs, variants, key[0], eval_out[key])


def _outputs(task, inputs: engine.Inputs, variants, name: str, path: Path):
    import numpy as np

    from compress.tasks.common import unbatch

    folder = next(v.folder for v in variants if v.name == name)
    batches = inputs.eval(folder)[1]
    with np.load(path) as data:
        keys = [k for k in data.files if k.startswith("b0_")]
        output = f"b0_{task.OUTPUT_NAME}" if f"b0_{task.OUTPUT_NAME}" in keys else keys[0]
        return unbatch([data[output.replace("b0_", f"b{i}_", 1)] for i in range(len(batches))], batches)


def _quality(task, reference, inputs: engine.Inputs, variants, key: tuple, path: Path, labels) -> tuple[dict, dict]:
    """(the task's quality figures, its per-item scores for the report's intervals: {} for a task without)."""
    import math

    import numpy as np

    if reference is None:
        return {}, {}
    outputs = _outputs(task, inputs, variants, key[0], path)
    bad = int(np.size(outputs) - np.count_nonzero(np.isfinite(outputs)))
    truth = np.asarray(labels) if labels is not None else None
    scores = task.quality(reference, outputs, truth)
    scores = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scores.items()}
    items = {} if bad or not hasattr(task, "item_scores") else task.item_scores(reference, outputs, truth)
    return ({**scores, "nonfinite_outputs": bad} if bad else scores), items
