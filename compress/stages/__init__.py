"""The stage registry: one explicit table of stage kind -> (config model, run function).

A stage module defines `Config` (a StageBase with a `kind` literal) and `run(cfg, ctx) -> list[Artifact]`;
it imports torch and onnxruntime inside its functions only, so that this table is cheap to build. The
causal-lm stages (lm_*.py) share the generic stages' configs and are chosen by OVERRIDES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compress.stages import bench, distill, export, finetune, generate, lm_bench, lm_distill, lm_export, quantize


@dataclass(frozen=True)
class StageSpec:
    config: type
    run: Callable


STAGES: dict[str, StageSpec] = {
    module.Config.model_fields["kind"].default: StageSpec(module.Config, module.run)
    for module in (finetune, generate, distill, export, quantize, bench)
}


# A task's own implementation of a stage kind, where it differs in kind from the generic one:
# (task name, stage kind) -> run function. causal-lm trains on generated text, exports with past key/values
# and times generation.
OVERRIDES: dict[tuple[str, str], Callable] = {
    ("causal-lm", "distill"): lm_distill.run,
    ("causal-lm", "export"): lm_export.run,
    ("causal-lm", "bench"): lm_bench.run,
}


def run_stage(cfg, ctx) -> list:
    """Run one stage: the task's own implementation when it has one (OVERRIDES), else the generic stage."""
    run = OVERRIDES.get((ctx.recipe.task, cfg.kind)) or STAGES[cfg.kind].run
    return run(cfg, ctx)
