"""The bench engine shared by the bench stages (stages/bench.py, and stages/lm_bench.py for causal-lm).

Variants (the models benched) x providers x settings x targets make cells; `interleaved` measures them round
by round (A B C A B C ...) within a time budget; `row` makes a cell's result row, with its one id (`Cell.id`,
which every report, card and gate uses); `save_results` writes the bench artifact. Providers are checked per
target against what that target's onnxruntime offers (compress/targets/providers.py) before anything runs.
`cfg` is a bench stage's Config (stages/bench.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from compress.stages.bench_inputs import DATA, EVAL_BATCH, REAL_GROUPS, Inputs, savez  # noqa: F401 (the engine's API)
from compress.targets import providers as registry

JOB_TIMEOUT_S = 1800


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
    seq_len: int | str  # tokens, or DATA: the held-out texts at their own lengths
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


def fixed_settings(cfg, ctx, variants: list):
    """An ONNX input with a fixed sequence length (or batch size) benches at that length (that size) only."""
    from compress.tasks.common import fixed_axes

    fixed: dict = {}
    for v in variants:
        if v.runtime == "onnxruntime":
            fixed.update(fixed_axes(v.folder))
    update = {}
    if "sequence" in fixed and cfg.seq_lens != [fixed["sequence"]]:
        update["seq_lens"] = [fixed["sequence"]]
    if "batch" in fixed and cfg.batch_sizes != [fixed["batch"]]:
        update["batch_sizes"] = [fixed["batch"]]
    if update:
        ctx.console.print(f"  the model's axes are fixed ({', '.join(f'{k} {v}' for k, v in fixed.items())}): "
                          "benched at " + ", ".join(f"{k} {v}" for k, v in update.items()), highlight=False)
    return cfg.model_copy(update=update) if update else cfg


def interleaved(cfg, ctx, cells: list, unavailable: dict, budget, measure) -> tuple[dict, dict]:
    """Round 1 of every cell, then round 2 of every cell... (A B A B: a machine-wide slow spell hits every
    variant alike). `measure(cell, want_eval, round)` -> (result, eval output path); quality is evaluated once
    per variant, in round 1. Returns ({cell id: results}, {quality key: eval output path})."""
    from compress.progress import track

    results: dict[str, list[dict]] = {c.id: [] for c in cells}
    eval_out: dict[tuple, Path] = {}
    with track(ctx.console, "bench", cfg.rounds * len(cells), unit="measurement", transient=True) as progress:
        for round_ in range(cfg.rounds):
            for cell in cells:
                progress.advance(1, text=f"round {round_ + 1}/{cfg.rounds} {cell.id}")
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
    doc = {"environment": environment(), "targets": {name: {**env, "emulated": targets[name].emulated}
                                                      for name, env in envs.items()},
           "settings": settings, "rows": rows}
    artifact = ctx.save("bench", "bench", lambda tmp: write_results(tmp, doc, samples), {"rows": len(rows)})
    summarize(ctx, rows)
    return artifact


def open_targets(cfg, ctx) -> dict:
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


def check_providers(cfg, envs: dict[str, dict]) -> dict[tuple, str]:
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


def check_strict(cfg, rows: list[dict]) -> None:
    """A fallback seen only once the session existed (listed is not usable) fails a strict run too."""
    fell_back = [r for r in rows if r["status"] == "unavailable"]
    if cfg.strict_providers and fell_back:
        raise registry.ProviderUnavailable("strict providers: " + "; ".join(
            registry.message(r["provider_request"], r["reason"], r["target"]) for r in fell_back))


def cells(cfg, variants: list[Variant], targets: dict) -> list[Cell]:
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


class Budget:
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


def measure_dir(work_dir: Path) -> Path:
    """A folder of this process: the subprocesses of a run killed with SIGKILL live on for a while, and must
    not write into the files that the next run reads. Only the folders of earlier processes (m<pid>, real
    folders, not links) are removed, and never through a link (`work_dir` is the stage's, checked by the
    context)."""
    import re

    from compress.artifacts import remove

    for stale in sorted(work_dir.iterdir()) if work_dir.is_dir() else []:
        if (re.fullmatch(r"m\d+", stale.name) and stale.name != f"m{os.getpid()}" and stale.is_dir()
                and not stale.is_symlink()):
            remove(stale, within=work_dir)
    path = work_dir / f"m{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def variants(cfg, ctx) -> list[Variant]:
    from compress.artifacts import model_file
    from compress.sources import check_onnx

    out = []
    teacher = ctx.teacher(required=False)  # the fine-tuned one when a finetune stage ran
    if cfg.baseline and teacher is not None:
        out.append(Variant("teacher", "torch", teacher.path, "teacher", "fp32", None, size_mb(teacher.path, "torch")))
    for a in ctx.of_format("onnx", cfg.models):
        check_onnx(model_file(a.path))  # a truncated or corrupt file: a StageError naming it, before any timing
        meta = a.metadata
        out.append(Variant(a.name, "onnxruntime", a.path, meta.get("role", "unknown"), meta.get("precision", "fp32"),
                           meta.get("source"), size_mb(a.path, "onnxruntime")))
    return out


def size_mb(folder: Path, runtime: str) -> float:
    suffixes = (".safetensors", ".bin") if runtime == "torch" else (".onnx", ".onnx_data", ".data")
    # Links (a bundle's root model.onnx -> onnx/model.onnx) are not counted twice.
    return sum(p.stat().st_size for p in Path(folder).rglob("*")
               if p.name.endswith(suffixes) and not p.is_symlink()) / 1e6


def row(cell: Cell, results: list[dict], quality: dict, emulated: bool = False, median: float | None = None,
        items: dict | None = None) -> dict:
    """A cell's row; `median`: for a real-length cell, the held-out texts' median token count (its setting label);
    `items`: per quality key, the per-item scores the report's bootstrap intervals resample (quality_items)."""
    import statistics

    from compress.targets.harness import summarize

    v = cell.variant
    failed = next((r for r in results if r["status"] != "ok"), None)
    row = {"id": cell.id, "variant": v.name, "role": v.role, "precision": v.precision, "source": v.source,
           "runtime": v.runtime, "provider": cell.provider, "provider_request": cell.request, "provider_used": None,
           "target": cell.target, "emulated": emulated, "host": host(cell.target),
           "status": failed["status"] if failed else "ok", "reason": failed.get("reason") if failed else None,
           "batch_size": cell.batch_size, "seq_len": cell.seq_len, "threads": cell.threads,
           "inter_op_threads": cell.inter_threads, "graph_optimization": cell.graph_opt,
           "execution_mode": cell.execution_mode,
           "latency_ms": None, "throughput": None, "peak_rss_mb": None, "size_mb": round(v.size_mb, 3),
           "quality": {}, "rounds": len(results)}
    if cell.seq_len == DATA:
        row["seq_len_median"] = median
        row["real_lengths"] = next((r.get("real_lengths") for r in results if r.get("real_lengths")), None)
    if failed or not results:
        return row
    merged = summarize([s for r in results for s in r["samples_ms"]], cell.batch_size)
    latency = {k: merged["latency_ms"][k] for k in ("p50", "p90", "p99", "mean", "stdev")}
    latency["rounds_p50"] = [r["latency_ms"]["p50"] for r in results]
    latency["n"] = merged["latency_ms"]["n"]
    row.update(latency_ms=latency, throughput=merged["throughput"], provider_used=results[0]["providers_used"][0],
               peak_rss_mb=max(r["peak_rss_mb"] or 0.0 for r in results), machine=results[0].get("machine"),
               placement=results[0].get("placement"),
               quality=quality.get(cell.key, {}),
               quality_items={k: [round(float(v), 6) for v in values]  # a cosine of 0.99996 is no 1.0
                              for k, values in ((items or {}).get(cell.key) or {}).items()},
               spread=(max(latency["rounds_p50"]) - min(latency["rounds_p50"])) / statistics.median(latency["rounds_p50"]))
    return row


def host(target: str) -> str:
    """Where a row was timed: this machine's name for `local`, else the target's (a Ray sweep spans machines)."""
    import platform

    return (platform.node() or "local") if target == "local" else target


def environment() -> dict:
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


def write_results(folder: Path, doc: dict, samples: dict) -> None:
    from compress.targets.harness import clean

    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(clean(doc), indent=1) + "\n", encoding="utf-8")
    (folder / "samples.json").write_text(json.dumps(clean(samples)) + "\n", encoding="utf-8")


def summarize(ctx, rows: list[dict]) -> None:
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
