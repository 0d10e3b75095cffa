"""pydantic's validation errors as a person reads them: `file:line: key.path: message`, one line each."""

from __future__ import annotations

import yaml
from pydantic import ValidationError

from compress.recipe.loader import key_path, locate
from compress.recipe.schema import Recipe
from compress.schema_base import StrictModel
from compress.stages import STAGES


def format_errors(exc: ValidationError, root: yaml.Node | None, filename: str, overridden: set) -> str:
    lines = []
    for error in exc.errors():
        loc, line = locate(root, error["loc"])
        overrode = any(loc[: len(o)] == o[: len(loc)] for o in overridden)
        where = "--set" if overrode else f"{filename}:{line}"
        key = key_path(loc)
        lines.append(_shorten(f"{where}: {key + ': ' if key else ''}{_message(error, loc)}"))
    lines = list(dict.fromkeys(lines))
    if len(lines) > MAX_ERRORS:  # a generated or hostile recipe can have thousands
        lines = lines[:MAX_ERRORS] + [f"... and {len(lines) - MAX_ERRORS} more errors"]
    return "\n".join(lines)


MAX_ERRORS = 20


def _shorten(line: str, limit: int = 300) -> str:
    # One error, one line: a key may hold a newline or a control character.
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _message(error: dict, loc: tuple) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    value = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(error["loc"][:-1])
        allowed = f" (allowed: {', '.join(parent.model_fields)})" if parent else ""
        return f"unknown key {loc[-1]!r}{allowed}"
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected')}"
    if kind == "union_tag_invalid":
        return f"unknown stage kind {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return f"missing 'kind' (one of {', '.join(STAGES)})"
    if kind == "missing":
        return "required key is missing"
    return error["msg"][0].lower() + error["msg"][1:] if error["msg"] else kind


def _model_at(loc: tuple):
    """The pydantic model class at a key path of the recipe, to list its allowed keys."""
    model, items = Recipe, list(loc)
    while items:
        part = items.pop(0)
        if isinstance(part, int):
            continue
        if model is Recipe and part == "stages":
            if len(items) >= 2 and isinstance(items[0], int) and items[1] in STAGES:
                model = STAGES[items[1]].config
                items = items[2:]
                continue
            return None
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, StrictModel)]
        if not nested:
            return None
        model = nested[0]
    return model
