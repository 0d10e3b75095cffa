"""The base of every recipe model: unknown keys are errors, descriptions are the help text."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageBase(StrictModel):
    """Fields shared by every stage. Each stage declares which artifact formats it reads and writes,
    so `compress validate` can check the chain without importing torch or onnxruntime."""

    consumes: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()

    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Stage name in logs and the manifest (default: its kind, numbered when repeated).",
    )
