"""Stage bench: latency, memory and quality of every ONNX variant (and the torch teacher) per provider.

Every measurement runs in its own subprocess (the ONNX ones through targets/harness.py, the file that
also runs on remote devices), so peak RSS is the model's own and one crash does not end the stage.
Variants are interleaved round by round (A B C A B C ...) so that a noisy neighbour hits all of them
alike; samples of all rounds are merged and the per-round medians are kept to show the spread.
Quality is scored once per variant, provider and target against the teacher's PyTorch fp32 outputs.

Providers are checked before anything runs, per target, against what that target's onnxruntime offers
(compress/providers.py); what cannot run becomes a row with status "unavailable" and the reason, or, with
strict_providers (`compress run --strict-providers`), stops the stage. Targets other than `local` run the
same harness over SSH or under QEMU (compress/targets/remote.py); their rows carry the target's name and
whether its timings are emulated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from compress import providers as registry
from compress.providers import provider_name  # noqa: F401 - the stage's public name for it
from compress.schema_base import StageBase

ProviderSpec = str | dict[str, dict[str, str | int | float | bool]]
EVAL_BATCH = 32
JOB_TIMEOUT_S = 1800


class Config(StageBase):
    consumes = ("onnx",)
    produces = ("bench",)

    kind: Literal["bench"] = "bench"
    providers: list[ProviderSpec] = Field(
        default_factory=lambda: ["cpu"], min_length=1, description="Execution providers to run on: cpu, cuda, "
        "tensorrt, openvino, arm (the CPU provider on an aarch64 host), any onnxruntime provider name, or "
        "{name: {option: value}} with provider options.")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, description="Batch sizes to time.")
    seq_lens: list[int] = Field(default_factory=lambda: [128], min_length=1, description="Sequence lengths to time.")
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

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[str]) -> list[str]:
        if len(set(targets)) != len(targets):
            raise ValueError(f"a target is listed twice: {targets}")
        return targets


@dataclass(frozen=True)
class Variant:
    name: str
    runtime: str  # onnxruntime | torch
    folder: Path  # the bundle or the Hugging Face model folder (tokenizer included)
    role: str
    precision: str
    source: str | None
    size_mb: float


@dataclass(frozen=True)
class Cell:
    variant: Variant
    provider: str  # onnxruntime's name
    batch_size: int
    seq_len: int
    threads: int
    request: str = "cpu"  # the name in the recipe (arm and cpu are both CPUExecutionProvider)
    options: str | None = None  # provider options as JSON
    inter_threads: int = 1
    graph_opt: str = "all"
    execution_mode: str = "sequential"
    target: str = "local"

    @property
    def label(self) -> str:
        """The provider in ids and quality keys: onnxruntime's name, except for `arm`."""
        return "arm" if self.request.lower() == "arm" else self.provider

    @property
    def id(self) -> str:
        base = f"{self.variant.name}|{self.label}|b{self.batch_size}|s{self.seq_len}|t{self.threads}"
        extra = [f"i{self.inter_threads}" if self.inter_threads != 1 else "",
                 f"opt-{self.graph_opt}" if self.graph_opt != "all" else "",
                 self.execution_mode if self.execution_mode != "sequential" else "",
                 f"@{self.target}" if self.target != "local" else ""]
        return "|".join([base, *(e for e in extra if e)])

    @property
    def key(self) -> tuple:
        """What quality is scored per."""
        return (self.variant.name, self.label, self.target)


def run(cfg: Config, ctx) -> list:
    variants = _variants(cfg, ctx)
    targets = _open_targets(cfg, ctx)
    try:
        envs = {name: t.environment() for name, t in targets.items()}
        unavailable = _check_providers(cfg, envs)
        cells = _cells(cfg, variants, targets)
        data = ctx.task.load_data(ctx.recipe.data)
        examples = ctx.task.examples(data.eval)
        n_eval = min(cfg.eval_size or ctx.recipe.data.eval_size, len(examples))
        inputs = _Inputs(ctx.work_dir, examples[:n_eval], ctx.recipe.data.max_length, ctx.task)
        budget, work = _Budget(cfg.time_budget_s), _measure_dir(ctx.work_dir)

        def measure(cell, want_eval, round_):
            return _measure(cfg, cell, inputs, want_eval, work / f"r{round_}", ctx.recipe.task, budget,
                            targets[cell.target])

        results, eval_out = interleaved(cfg, ctx, cells, unavailable, budget, measure)
    finally:
        for target in targets.values():
            target.close()
    reference = _reference(cfg, ctx, variants, inputs, eval_out, work)
    labels = data.eval.labels[:n_eval] if data.eval.labels else None
    quality = {k: _quality(ctx.task, reference, inputs, variants, k, path, labels) for k, path in eval_out.items()
               if any(v.name == k[0] for v in variants)}
    rows = [_row(c, results[c.id], quality, targets[c.target].emulated) for c in cells]
    _strict(cfg, rows)
    settings = {**cfg.model_dump(mode="json"), "eval_size": n_eval, "max_length": ctx.recipe.data.max_length}
    return [save_results(ctx, cells, results, rows, envs, targets, settings)]


def interleaved(cfg: Config, ctx, cells: list, unavailable: dict, budget, measure) -> tuple[dict, dict]:
    """Round 1 of every cell, then round 2 of every cell... (A B A B: a machine-wide slow spell hits every
    variant alike). `measure(cell, want_eval, round)` -> (result, eval output path); quality is evaluated once
    per variant, in round 1. Returns ({cell id: results}, {quality key: eval output path})."""
    from rich.progress import Progress

    results: dict[str, list[dict]] = {c.id: [] for c in cells}
    eval_out: dict[tuple, Path] = {}
    with Progress(console=ctx.console, transient=True) as progress:
        bar = progress.add_task("bench", total=cfg.rounds * len(cells))
        for round_ in range(cfg.rounds):
            for cell in cells:
                progress.update(bar, advance=1, description=f"round {round_ + 1}/{cfg.rounds} {cell.id}")
                done = results[cell.id]
                if done and done[-1]["status"] != "ok":
                    continue  # unavailable or broken: do not retry every round
                want_eval = cell.key not in eval_out and round_ == 0
                reason = unavailable.get((cell.target, cell.request)) if cell.variant.runtime != "torch" else None
                if reason:
                    done.append({"status": "unavailable", "reason": reason})
                    continue
                if budget.spent():
                    if not done:
                        done.append({"status": "skipped", "reason": budget.reason("before this measurement")})
                    continue
                result, out = measure(cell, want_eval, round_)
                if result["status"] == "skipped" and done:
                    continue  # earlier rounds measured it: keep those
                done.append(result)
                if want_eval and result["status"] == "ok":
                    eval_out[cell.key] = out
    return results, eval_out


def save_results(ctx, cells: list, results: dict, rows: list[dict], envs: dict, targets: dict, settings: dict):
    """The bench artifact (results.json: environment, targets, settings, rows; samples.json), and the summary."""
    samples = {c.id: [r.get("samples_ms", []) for r in results[c.id]] for c in cells}
    doc = {"environment": _environment(), "targets": {name: {**env, "emulated": targets[name].emulated}
                                                      for name, env in envs.items()},
           "settings": settings, "rows": rows}
    artifact = ctx.save("bench", "bench", lambda tmp: _write(tmp, doc, samples), {"rows": len(rows)})
    _summarize(ctx, rows)
    return artifact


def _open_targets(cfg: Config, ctx) -> dict:
    from compress.errors import StageError
    from compress.targets.remote import open_target

    declared = ctx.recipe.targets
    missing = [name for name in cfg.targets if name != "local" and name not in declared]
    if missing:
        raise StageError(f"bench targets {missing} are not declared in the recipe's `targets` "
                         f"(declared: {', '.join(declared) or 'none'}; `local` needs no entry)")
    opened = {}
    try:
        for name in cfg.targets:
            opened[name] = open_target(name, declared.get(name), ctx.work_dir)
    except BaseException:
        for target in opened.values():
            target.close()
        raise
    return opened


def _check_providers(cfg: Config, envs: dict[str, dict]) -> dict[tuple, str]:
    """{(target, provider as written): why it cannot run there}; with strict_providers, any is an error."""
    unavailable = {}
    for target, env in envs.items():
        for spec in cfg.providers:
            provider = registry.parse(spec)
            reason = registry.unavailable_reason(provider, env)
            if reason:
                unavailable[(target, provider.request)] = reason
    if cfg.strict_providers and unavailable:
        raise registry.ProviderUnavailable(
            "strict providers: " + "; ".join(registry.message(p, r, t) for (t, p), r in unavailable.items())
            + ". Install the provider's package or drop it from the bench stage's providers; without "
            "--strict-providers it is reported as unavailable and the others run.")
    return unavailable


def _strict(cfg: Config, rows: list[dict]) -> None:
    """A fallback seen only once the session existed (listed is not usable) fails a strict run too."""
    fell_back = [r for r in rows if r["status"] == "unavailable"]
    if cfg.strict_providers and fell_back:
        raise registry.ProviderUnavailable("strict providers: " + "; ".join(
            registry.message(r["provider_request"], r["reason"], r["target"]) for r in fell_back))


def _cells(cfg: Config, variants: list[Variant], targets: dict) -> list[Cell]:
    """Every variant x provider x setting x target; the torch baseline once per b/s/t, on this machine."""
    import json as json_
    from itertools import product

    settings = list(product(cfg.batch_sizes, cfg.seq_lens, cfg.threads, cfg.inter_op_threads,
                            cfg.graph_optimization, cfg.execution_mode))
    first = (cfg.inter_op_threads[0], cfg.graph_optimization[0], cfg.execution_mode[0])
    cells = []
    for target in targets:
        for (b, s, t, inter, opt, mode) in settings:
            for spec in cfg.providers:
                provider = registry.parse(spec)
                options = json_.dumps(provider.options, sort_keys=True) if provider.options else None
                for v in variants:
                    if v.runtime == "torch":
                        if target != "local" or spec != cfg.providers[0] or (inter, opt, mode) != first:
                            continue
                        cells.append(Cell(v, "cpu", b, s, t))
                        continue
                    cells.append(Cell(v, provider.name, b, s, t, provider.request, options, inter, opt, mode, target))
    return cells


class _Budget:
    """The stage's total time budget: what is left, and why a measurement was not made."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def spent(self) -> bool:
        left = self.left()
        return left is not None and left <= 0

    def reason(self, when: str) -> str:
        return f"time budget of {self.seconds:g} s (time_budget_s) ran out {when}"


def _measure_dir(work_dir: Path) -> Path:
    """A folder of this process: the subprocesses of a run killed with SIGKILL live on for a while, and must
    not write into the files that the next run reads."""
    import shutil

    for stale in work_dir.glob("m*"):
        if stale.is_dir() and stale.name != f"m{os.getpid()}":
            shutil.rmtree(stale, ignore_errors=True)
    path = work_dir / f"m{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _savez(path: Path, arrays: dict) -> None:
    """np.savez under a temporary name, renamed when complete: a killed run leaves no truncated input file."""
    import numpy as np

    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def _variants(cfg: Config, ctx) -> list[Variant]:
    from compress.sources import check_onnx

    out = []
    teacher = ctx.teacher()  # the fine-tuned one when a finetune stage ran
    if cfg.baseline and teacher is not None:
        out.append(Variant("teacher", "torch", teacher.path, "teacher", "fp32", None, _size_mb(teacher.path, "torch")))
    for a in ctx.of_format("onnx", cfg.models):
        check_onnx(a.path / "model.onnx")  # a truncated or corrupt file: a StageError naming it, before any timing
        meta = a.metadata
        out.append(Variant(a.name, "onnxruntime", a.path, meta.get("role", "unknown"), meta.get("precision", "fp32"),
                           meta.get("source"), _size_mb(a.path, "onnxruntime")))
    return out


def _size_mb(folder: Path, runtime: str) -> float:
    suffixes = (".safetensors", ".bin") if runtime == "torch" else (".onnx", ".onnx_data", ".data")
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.name.endswith(suffixes)) / 1e6


class _Inputs:
    """Pre-built npz inputs, per tokenizer (variants may not share one): timing sets and eval batches, made by
    the task's input hook from its examples (texts, images)."""

    def __init__(self, work: Path, texts, max_length: int, task):
        self.work, self.texts, self.max_length = work / "inputs", texts, max_length
        self.hook, self.names = task.inputs, task.INPUT_NAMES
        self.work.mkdir(parents=True, exist_ok=True)
        self._batches: dict[str, list[dict]] = {}

    def _key(self, folder: Path) -> str:
        import hashlib

        digest = hashlib.sha256()
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "merges.txt"):
            if (folder / name).is_file():
                digest.update(name.encode() + (folder / name).read_bytes())
        return digest.hexdigest()[:12]

    def timing(self, folder: Path, batch: int, seq: int) -> Path:
        """Real eval texts padded to exactly `seq` tokens (images: as they are), repeated up to the batch size."""
        path = self.work / f"{self._key(folder)}-b{batch}-s{seq}.npz"
        if not path.is_file():
            texts = [self.texts[i % len(self.texts)] for i in range(batch)]
            _savez(path, self.hook(folder).encode(texts, seq, pad_to_max=True))
        return path

    def eval(self, folder: Path) -> tuple[Path, list[dict]]:
        key = self._key(folder)
        path = self.work / f"{key}-eval.npz"
        if key not in self._batches:
            self._batches[key] = self.hook(folder).batches(self.texts, self.max_length, EVAL_BATCH)
            _savez(path, {f"b{i}_{n}": b[n] for i, b in enumerate(self._batches[key]) for n in self.names})
        return path, self._batches[key]


def _measure(cfg: Config, cell: Cell, inputs: _Inputs, want_eval: bool, work: Path, task: str,
             budget: _Budget | None = None, target=None) -> tuple[dict, Path | None]:
    work.mkdir(parents=True, exist_ok=True)
    stem = cell.id.replace("|", "_").replace("@", "at-")
    out, eval_out = work / f"{stem}.json", work / f"{stem}.eval.npz"
    timing = ["--warmup", str(cfg.warmup), "--min-iterations", str(cfg.min_iterations),
              "--min-seconds", str(cfg.min_seconds), "--threads", str(cell.threads)]
    files = {"--inputs": inputs.timing(cell.variant.folder, cell.batch_size, cell.seq_len)}
    if want_eval:
        files["--eval"] = inputs.eval(cell.variant.folder)[0]
    left = budget.left() if budget else None
    timeout = JOB_TIMEOUT_S if left is None else max(0.1, min(JOB_TIMEOUT_S, left))
    try:
        if cell.variant.runtime == "torch":
            # Loaded by path: the worker must not depend on every stage of the registry importing cleanly.
            code = ("import sys, importlib.util as u; s = u.spec_from_file_location('bench_worker', sys.argv[1]); "
                    "m = sys.modules['bench_worker'] = u.module_from_spec(s); s.loader.exec_module(m); "
                    "sys.exit(m.torch_worker(sys.argv[2:]))")
            args = [a for flag, path in files.items() for a in (flag, str(path))] + ["--out", str(out)]
            args += ["--eval-out", str(eval_out)] if want_eval else []
            command = [sys.executable, "-c", code, __file__, task, "--model", str(cell.variant.folder), *args, *timing]
            proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        else:
            from compress.targets.remote import LocalTarget

            options = ["--provider", cell.provider, "--inter-threads", str(cell.inter_threads),
                       "--graph-opt", cell.graph_opt, "--execution-mode", cell.execution_mode,
                       "--io-binding", cfg.io_binding, *timing]
            options += ["--provider-options", cell.options] if cell.options else []
            proc = (target or LocalTarget()).run_harness(cell.variant.folder, files, options, out,
                                                         eval_out if want_eval else None, timeout)
    except subprocess.TimeoutExpired:
        if timeout < JOB_TIMEOUT_S:
            return {"status": "skipped", "reason": budget.reason("during this measurement (stopped)")}, None
        return {"status": "error", "reason": f"timed out after {JOB_TIMEOUT_S} s"}, None
    if not out.is_file():
        return {"status": "error", "reason": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}, None
    return json.loads(out.read_text()), eval_out if want_eval else None


def torch_worker(argv: list[str]) -> int:
    """The PyTorch fp32 baseline, in its own process: same timing loop and result format as the harness."""
    import os
    import platform

    import numpy as np
    import torch

    from compress.targets import harness
    from compress.tasks import get_task

    task, args = get_task(argv[0]), harness.parse_args(argv[1:])
    model = task.load_model(Path(args.model)).eval()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with np.load(args.inputs) as data:
        feeds = [torch.from_numpy(data[n]) for n in task.INPUT_NAMES]  # built once, outside the loop
    with torch.inference_mode():
        samples = harness.time_loop(lambda: model(*feeds), args.warmup, args.min_iterations, args.min_seconds)
        batch, seq = feeds[0].shape[:2]
        result = {"status": "ok", "reason": None, "provider": "cpu", "providers_used": ["cpu"],
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(), "batch_size": int(batch),
                  "seq_len": int(seq), **harness.summarize(samples, int(batch)), "samples_ms": samples,
                  "peak_rss_mb": harness.peak_rss_mb()}
        if args.eval:
            torch.set_num_threads(os.cpu_count() or 1)  # the reference is not timed: use every core
            outputs = {f"b{i}_{task.OUTPUT_NAME}": model(*(torch.from_numpy(b[n]) for n in task.INPUT_NAMES)).numpy()
                       for i, b in enumerate(harness.eval_batches(args.eval))}
            np.savez(args.eval_out, **outputs)
    Path(args.out).write_text(json.dumps(harness._clean(result)))
    return 0


def _reference(cfg: Config, ctx, variants, inputs: _Inputs, eval_out: dict, work: Path):
    """The teacher's PyTorch fp32 outputs on the eval texts, in text order (None without a teacher)."""
    teacher = ctx.teacher()  # the fine-tuned one when a finetune stage ran
    if ("teacher", "cpu", "local") not in eval_out and teacher is not None:
        # No timed baseline: run the worker once for its eval outputs only.
        quick = cfg.model_copy(update={"warmup": 0, "min_iterations": 1, "min_seconds": 0.0})
        variant = Variant("teacher", "torch", teacher.path, "teacher", "fp32", None, 0.0)
        cell = Cell(variant, "cpu", 1, cfg.seq_lens[0], 0)
        result, out = _measure(quick, cell, inputs, True, work / "reference", ctx.recipe.task)
        if result["status"] == "ok":
            eval_out[cell.key] = out
        variants = [*variants, variant]
    key = ("teacher", "cpu", "local")
    if key not in eval_out:
        ctx.console.print("  [yellow]no reference outputs from the teacher in PyTorch: quality not scored[/yellow]")
        return None
    return _outputs(ctx.task, inputs, variants, "teacher", eval_out[key])


def _outputs(task, inputs: _Inputs, variants, name: str, path: Path):
    import numpy as np

    from compress.tasks.common import unbatch

    folder = next(v.folder for v in variants if v.name == name)
    batches = inputs.eval(folder)[1]
    with np.load(path) as data:
        keys = [k for k in data.files if k.startswith("b0_")]
        output = f"b0_{task.OUTPUT_NAME}" if f"b0_{task.OUTPUT_NAME}" in keys else keys[0]
        return unbatch([data[output.replace("b0_", f"b{i}_", 1)] for i in range(len(batches))], batches)


def _quality(task, reference, inputs: _Inputs, variants, key: tuple, path: Path, labels) -> dict:
    import math

    import numpy as np

    if reference is None:
        return {}
    outputs = _outputs(task, inputs, variants, key[0], path)
    bad = int(np.size(outputs) - np.count_nonzero(np.isfinite(outputs)))
    scores = task.quality(reference, outputs, np.asarray(labels) if labels is not None else None)
    scores = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scores.items()}
    return {**scores, "nonfinite_outputs": bad} if bad else scores


def _row(cell: Cell, results: list[dict], quality: dict, emulated: bool = False) -> dict:
    import statistics

    from compress.targets.harness import summarize

    v = cell.variant
    failed = next((r for r in results if r["status"] != "ok"), None)
    row = {"id": cell.id, "variant": v.name, "role": v.role, "precision": v.precision, "source": v.source,
           "runtime": v.runtime, "provider": cell.provider, "provider_request": cell.request, "provider_used": None,
           "target": cell.target, "emulated": emulated,
           "status": failed["status"] if failed else "ok", "reason": failed.get("reason") if failed else None,
           "batch_size": cell.batch_size, "seq_len": cell.seq_len, "threads": cell.threads,
           "inter_op_threads": cell.inter_threads, "graph_optimization": cell.graph_opt,
           "execution_mode": cell.execution_mode,
           "latency_ms": None, "throughput": None, "peak_rss_mb": None, "size_mb": round(v.size_mb, 3),
           "quality": {}, "rounds": len(results)}
    if failed or not results:
        return row
    merged = summarize([s for r in results for s in r["samples_ms"]], cell.batch_size)
    latency = {k: merged["latency_ms"][k] for k in ("p50", "p90", "p99", "mean", "stdev")}
    latency["rounds_p50"] = [r["latency_ms"]["p50"] for r in results]
    latency["n"] = merged["latency_ms"]["n"]
    row.update(latency_ms=latency, throughput=merged["throughput"], provider_used=results[0]["providers_used"][0],
               peak_rss_mb=max(r["peak_rss_mb"] or 0.0 for r in results), machine=results[0].get("machine"),
               quality=quality.get(cell.key, {}),
               spread=(max(latency["rounds_p50"]) - min(latency["rounds_p50"])) / statistics.median(latency["rounds_p50"]))
    return row


def _environment() -> dict:
    import os
    import platform
    from importlib import metadata

    try:
        from compress.targets.cpu import cpu_info

        cpu = cpu_info()
    except (ImportError, OSError, ValueError):  # cpu.py missing or failing: still record what the standard library knows
        cpu = {"model": platform.processor() or "unknown", "arch": platform.machine(), "cores": os.cpu_count(),
               "flags": {}}
    versions = {}
    for package in ("onnxruntime", "torch", "numpy", "transformers", "onnx"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "os": platform.platform(), "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "versions": versions}


def _write(folder: Path, doc: dict, samples: dict) -> None:
    from compress.targets.harness import _clean

    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(_clean(doc), indent=1) + "\n", encoding="utf-8")
    (folder / "samples.json").write_text(json.dumps(_clean(samples)) + "\n", encoding="utf-8")


def _summarize(ctx, rows: list[dict]) -> None:
    ran = [r for r in rows if r["status"] == "ok"]
    nonfinite = {r["id"]: r["quality"]["nonfinite_outputs"] for r in ran if r["quality"].get("nonfinite_outputs")}
    ctx.metrics.update(rows=len(rows), ran=len(ran), unavailable=sum(r["status"] == "unavailable" for r in rows),
                       errors=sum(r["status"] == "error" for r in rows),
                       skipped=sum(r["status"] == "skipped" for r in rows), nonfinite_outputs=nonfinite,
                       p50_ms={r["id"]: round(r["latency_ms"]["p50"], 3) for r in ran})
    for r in rows:
        if r["id"] in nonfinite:  # the report flags it NaN and never recommends it
            ctx.console.print(f"  [red]{r['id']}: {nonfinite[r['id']]} NaN/Inf outputs: flagged, not recommended[/red]")
        elif r["status"] == "ok":
            ctx.console.print(f"  {r['id']}: p50 {r['latency_ms']['p50']:.2f} ms, "
                              + ", ".join(f"{k} {v:.4f}" for k, v in r["quality"].items() if isinstance(v, float)))
        elif r["status"] == "unavailable":
            from rich.markup import escape

            message = escape(f"{r['id']}: {registry.message(r['provider_request'], r['reason'], r['target'])}")
            ctx.console.print(f"  [yellow]{message}[/yellow]", highlight=False)
        else:
            ctx.console.print(f"  [yellow]{r['id']}: {r['status']}: {r['reason']}[/yellow]")
