"""`--set a.b.0.c=value` overrides (and the same path syntax for a sweep's matrix keys)."""

from __future__ import annotations

from typing import Any

from compress.errors import RecipeError
from compress.recipe.loader import compose, construct


def apply_override(data: dict, item: str) -> tuple:
    """Apply `a.b.0.c=value` (value parsed as YAML) to `data`; return the key path."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. stages.0.epochs=2")
    try:
        value = construct(compose(raw, "--set"), "--set")
    except RecipeError as exc:
        if "YAML syntax error" not in str(exc) and "is not allowed in YAML" not in str(exc):
            # too deep, too large, an unknown tag: refused as in a file
            raise RecipeError(str(exc).replace("--set:1:", f"--set {key}:", 1)) from None
        value = raw  # not YAML: taken as the string it is
    return apply_value(data, key, value, item)


def apply_value(data: dict, key: str, value: Any, item: str) -> tuple:
    """Set `a.b.0.c` in `data` to `value`; `item` names the setting in errors."""
    parts = key.split(".")
    target: Any = data
    for depth, part in enumerate(parts[:-1]):
        target = _step(target, part, parts[: depth + 1], item, create=True)
    last = parts[-1]
    if isinstance(target, list):
        _step(target, last, parts, item, create=False)
        target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise RecipeError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a mapping or list")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _step(target: Any, part: str, path: list[str], item: str, create: bool) -> Any:
    if isinstance(target, list):
        if not part.isdigit() or int(part) >= len(target):
            raise RecipeError(f"--set {item!r}: {'.'.join(path)} is not an index of a {len(target)}-item list")
        return target[int(part)]
    if isinstance(target, dict):
        if part not in target and create:
            target[part] = {}
        return target[part]
    raise RecipeError(f"--set {item!r}: {'.'.join(path[:-1])} is not a mapping or list")
