"""RunContext: everything a stage may use, passed in explicitly (no global state)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from compress.artifacts import Artifact, atomic_path, check_name, check_not_linked, sha256_path


@dataclass
class RunContext:
    run_dir: Path
    recipe: Any  # compress.recipe.Recipe
    stage_name: str
    artifacts: dict[str, Artifact]  # everything finished before this stage, the teacher included
    console: Console = field(default_factory=lambda: Console(stderr=True))
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("compress"))
    metrics: dict[str, Any] = field(default_factory=dict)  # this stage's metrics, kept in the manifest
    is_main_process: bool = True  # False on the non-zero ranks of a distributed stage

    @property
    def task(self):
        from compress.tasks import get_task

        return get_task(self.recipe.task)

    @property
    def work_dir(self) -> Path:
        """Scratch space of this stage that survives an interruption (checkpoints). Stages delete in it: a link
        there (work/ or work/<stage>) is refused, never written or cleaned through."""
        path = self.run_dir / "work" / self.stage_name
        check_not_linked(path, self.run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def of_format(self, fmt: str, names: list[str] | None = None) -> list[Artifact]:
        """Finished artifacts of one format, in creation order, optionally restricted to `names`."""
        found = [a for a in self.artifacts.values() if a.format == fmt]
        if names is None:
            return found
        unknown = [n for n in names if n not in {a.name for a in found}]
        if unknown:
            from compress.errors import StageError

            raise StageError(
                f"stage {self.stage_name}: no {fmt} artifact named {unknown[0]!r} "
                f"(have: {', '.join(a.name for a in found) or 'none'})"
            )
        return [a for a in found if a.name in names]

    def teacher(self, required: bool = True) -> Artifact | None:
        """The latest hf-model with role teacher: `teacher-finetuned` when a finetune stage ran, else `teacher`.
        Without one: a StageError, or None when not `required`."""
        teachers = [a for a in self.of_format("hf-model") if a.metadata.get("role") == "teacher"]
        if teachers:
            return teachers[-1]
        if required:
            from compress.errors import StageError

            raise StageError(f"stage {self.stage_name}: no hf-model artifact with role 'teacher'")
        return None

    def onnx_teacher(self) -> Artifact | None:
        """The teacher given as an fp32 ONNX model (teacher.onnx, compress/tasks/onnx_input.py); None otherwise."""
        found = [a for a in self.of_format("onnx") if a.metadata.get("input") == "onnx"]
        return found[0] if found else None

    def save(
        self, name: str, fmt: str, write: Callable[[Path], None], metadata: dict | None = None
    ) -> Artifact:
        """Create artifact `name` atomically: `write(tmp_path)` writes a file or a folder there."""
        final = self.run_dir / "artifacts" / check_name(name)
        with atomic_path(final) as tmp:
            write(tmp)
            if fmt == "onnx" and tmp.is_dir():  # every stage's bundle, quantized ones included
                from compress.tasks.common import finish_bundle

                finish_bundle(tmp)
        return Artifact(name=name, path=final, format=fmt, sha256=sha256_path(final), metadata=metadata or {})
