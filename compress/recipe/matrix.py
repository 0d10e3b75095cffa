"""A sweep's `matrix`: every combination of its values is a variant, a recipe of its own with a stable name."""

from __future__ import annotations

import copy
import itertools
import json
import re

from pydantic import ValidationError

from compress.errors import RecipeError
from compress.recipe.messages import format_errors
from compress.recipe.overrides import apply_value
from compress.recipe.schema import Recipe


def expand_matrix(recipe: Recipe, filename: str = "<recipe>") -> list[tuple[str, dict, Recipe]]:
    """The variants of a sweep as (name, {path: value}, recipe without a matrix), in matrix order."""
    if not recipe.matrix:
        return []
    base = recipe.model_dump(mode="json", exclude={"matrix", "executor"})  # where it runs is no part of a variant
    keys = list(recipe.matrix)
    combos = [dict(zip(keys, values)) for values in itertools.product(*recipe.matrix.values())]
    names = _variant_names(combos)
    out = []
    for name, values in zip(names, combos):
        data = copy.deepcopy(base)
        for key, value in values.items():
            apply_value(data, key, copy.deepcopy(value), f"matrix {key}")
        data["name"] = f"{recipe.name}.{name}"[:200]
        try:
            out.append((name, values, Recipe.model_validate(data)))
        except ValidationError as exc:
            detail = format_errors(exc, None, filename, set()).replace(f"{filename}:1: ", "")
            raise RecipeError(f"{filename}: matrix variant {name}: {detail}") from None
    return out


def _variant_names(combos: list[dict]) -> list[str]:
    """`layers-0-5_schemes-int8-dynamic`: the last word of each path and its value; numbered if not unique."""
    def slug(value) -> str:
        text = json.dumps(value) if not isinstance(value, str) else value
        return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.") or "x"

    names = ["_".join(f"{_last_word(k)}-{slug(v)}" for k, v in values.items())[:120] for values in combos]
    if len(set(names)) != len(names):
        names = [f"v{i + 1:02d}-{n}"[:120] for i, n in enumerate(names)]
    return names


def _last_word(key: str) -> str:
    return next((p for p in reversed(key.split(".")) if not p.isdigit()), key)
