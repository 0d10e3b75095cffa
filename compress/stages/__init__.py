"""The stage registry: one explicit table of stage kind -> (config model, run function).

A stage module defines `Config` (a StageBase with a `kind` literal) and `run(cfg, ctx) -> list[Artifact]`;
it imports torch and onnxruntime inside its functions only, so that this table is cheap to build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compress.stages import bench, distill, export, finetune, generate, quantize


@dataclass(frozen=True)
class StageSpec:
    config: type
    run: Callable


STAGES: dict[str, StageSpec] = {
    module.Config.model_fields["kind"].default: StageSpec(module.Config, module.run)
    for module in (finetune, generate, distill, export, quantize, bench)
}


def run_stage(cfg, ctx) -> list:
    """Run one stage: the task's own implementation when it has one (causal-lm), else the generic stage."""
    from compress.tasks import stage_override

    override = stage_override(ctx.task, cfg.kind)
    return (override or STAGES[cfg.kind].run)(cfg, ctx)
