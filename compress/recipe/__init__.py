"""Recipe v1: schema, YAML loading with line numbers, `--set` overrides, the sweep matrix, chain checks.

Importing this package must stay cheap (no torch, no onnxruntime): `compress validate` and `compress --help`
depend on it. Its modules: schema.py (the pydantic models), loader.py (the bounded YAML reader and line lookup),
overrides.py (`--set`), matrix.py (sweep variants), messages.py (validation errors as `file:line: key: message`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from compress.errors import RecipeError
from compress.recipe.loader import (
    INT64,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_NODES,
    check_numbers,
    compose,
    construct,
    read_text,
)
from compress.recipe.matrix import expand_matrix
from compress.recipe.messages import MAX_ERRORS, format_errors
from compress.recipe.overrides import apply_override, apply_value
from compress.recipe.schema import (
    MAX_VARIANTS,
    DataConfig,
    Gates,
    ModelSource,
    Provenance,
    Recipe,
    Select,
    StageConfig,
    Target,
    dump_recipe,
)

__all__ = [
    "INT64", "MAX_BYTES", "MAX_DEPTH", "MAX_ERRORS", "MAX_INT_DIGITS", "MAX_NODES", "MAX_VARIANTS", "DataConfig",
    "Gates", "ModelSource", "Provenance", "Recipe", "Select", "StageConfig", "Target", "apply_override",
    "apply_value", "dump_recipe", "expand_matrix", "load_recipe", "parse_recipe",
]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every failure is a RecipeError naming file:line: key."""
    return parse_recipe(read_text(path), str(Path(path)), overrides or [])


def parse_recipe(text: str, filename: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    try:
        return _parse(text, filename, overrides or [])
    except RecursionError:  # the guards below should make this unreachable; a traceback would be worse
        raise RecipeError(f"{filename}:1: nested too deeply to read") from None


def _parse(text: str, filename: str, overrides: list[str]) -> Recipe:
    root = compose(text, filename)
    data = construct(root, filename)
    if not isinstance(data, dict):
        raise RecipeError(f"{filename}:1: the recipe must be a mapping of keys (version, name, task, ...)")
    overridden = set()
    for item in overrides:
        overridden.add(apply_override(data, item))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, root, filename, overridden)) from None
    check_numbers(recipe, root, filename, overridden)
    expand_matrix(recipe, filename)  # every variant must be a valid recipe before anything runs
    return recipe
