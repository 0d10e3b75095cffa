"""The stage registry: one explicit table of stage kind -> (config model, run function).

A stage module defines `Config` (a StageBase with a `kind` literal) and `run(cfg, ctx) -> list[Artifact]`;
it imports torch and onnxruntime inside its functions only, so that this table is cheap to build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compress.stages import bench, distill, export, finetune, quantize


@dataclass(frozen=True)
class StageSpec:
    config: type
    run: Callable


STAGES: dict[str, StageSpec] = {
    module.Config.model_fields["kind"].default: StageSpec(module.Config, module.run)
    for module in (finetune, distill, export, quantize, bench)
}
