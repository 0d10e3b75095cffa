"""The bounded YAML reader: a recipe's text to data, with line numbers, refusing what would hang or exhaust it.

Bounds on size, nesting depth, values after alias expansion and integer digits keep a hostile recipe from
hanging the loader; duplicate keys are refused; `locate` finds the line of a key path for error messages.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from compress.errors import RecipeError

# Bounds that keep a hostile recipe from hanging or exhausting the loader; a real recipe is far below each.
MAX_BYTES = 1 << 20  # 1 MiB of YAML
MAX_DEPTH = 64  # nested mappings and lists
MAX_NODES = 100_000  # values after expanding aliases (a "billion laughs" expands to 10**9)
MAX_INT_DIGITS = 40  # longer integers are refused before Python parses them (slowly, or not at all)
INT64 = 2**63 - 1


def read_text(path: str | Path) -> str:
    """The text of a recipe file, read with a bound on its size; every failure is a RecipeError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # bounded: /dev/zero or a huge file must not hang us
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"{path}:1: larger than {MAX_BYTES // 1024} KiB; a recipe is a small YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return text


def compose(text: str, filename: str) -> yaml.Node | None:
    try:
        _check_depth(text, filename)  # before compose: PyYAML's composer recurses once per level
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RecipeError(f"{filename}:{line}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:  # a control character or a stray byte: no mark, only a position
        line = text[: exc.position].count("\n") + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise RecipeError(f"{filename}:{line}: character {char} is not allowed in YAML") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{filename}:1: YAML error: {exc}") from None
    if root is not None:
        _check_size(root, filename)
        _check_duplicates(root, filename, set())
    return root


def _check_depth(text: str, filename: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # iterative: safe at any depth
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"{filename}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_size(root: yaml.Node, filename: str) -> None:
    """Refuse alias bombs: count values as if every alias were expanded (memoized, so linear)."""
    sizes: dict[int, int] = {}
    # Children before parents, without recursion: a node's size needs its children's sizes.
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        if id(node) in sizes:
            continue
        sizes[id(node)] = 0
        order.append(node)
        if isinstance(node, yaml.ScalarNode):
            _check_scalar(node, filename)
        stack.extend(_children(node))
    for node in reversed(order):
        sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
    if sizes[id(root)] > MAX_NODES:
        raise RecipeError(f"{filename}:1: more than {MAX_NODES:,} values once aliases are expanded "
                          "(an alias bomb?); write the recipe out without nested aliases")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_scalar(node: yaml.ScalarNode, filename: str) -> None:
    if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_DIGITS:
        raise RecipeError(f"{filename}:{node.start_mark.line + 1}: a {len(node.value)}-digit number is too large")


class _Constructor(yaml.SafeLoader):
    """SafeLoader whose scalar constructors fail with the node's line: `!!timestamp 1` or `!!float x` raise
    AttributeError or ValueError inside PyYAML, without a mark."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            tag = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.value!r:.60} as {tag} ({exc})", node.start_mark) from None


def construct(root: yaml.Node | None, filename: str) -> Any:
    if root is None:
        return None
    try:
        return _Constructor("").construct_document(root)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise RecipeError(f"{filename}:{line}: {exc.problem}") from None



def _check_duplicates(node: yaml.Node, filename: str, visited: set) -> None:
    if id(node) in visited:  # an alias: already checked (and re-walking it is how alias bombs hang)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise RecipeError(f"{filename}:{key.start_mark.line + 1}: key {key.value!r} appears twice")
                seen.add(key.value)
            _check_duplicates(value, filename, visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, filename, visited)


def check_numbers(recipe, root: yaml.Node | None, filename: str, overridden: set) -> None:
    """inf, nan (also from strings like "1e400") and integers beyond int64 pass pydantic's checks but would
    hang a loop or overflow a C library later: refuse them here, with their line."""
    bad = []
    stack: list[tuple[tuple, Any]] = [((), recipe.model_dump(mode="python"))]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((loc + (k,), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((loc + (i,), v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append((loc, f"{value!r} is not a finite number"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
            bad.append((loc, "the number is too large (more than 2**63 - 1)"))
    lines = []
    for loc, message in sorted(bad, key=str):
        path, line = locate(root, loc)
        where = "--set" if any(loc[: len(o)] == o[: len(loc)] for o in overridden) else f"{filename}:{line}"
        lines.append(f"{where}: {key_path(loc)}: {message}")
    if lines:
        raise RecipeError("\n".join(lines))


def locate(root: yaml.Node | None, loc: tuple) -> tuple[tuple, int]:
    """Walk the YAML tree along a pydantic error location; skip the union tags pydantic inserts."""
    node, path, line = root, [], (root.start_mark.line + 1 if root else 1)
    for part in loc:
        child = _child(node, part)
        if child is None:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str) and _is_tag(node, part):
                continue
            path.append(part)
            break
        key_node, node = child
        path.append(part)
        line = (key_node or node).start_mark.line + 1
    return tuple(path), line


def _child(node: yaml.Node | None, part: Any):
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None


def _is_tag(node: yaml.MappingNode, part: str) -> bool:
    return any(k.value == "kind" and getattr(v, "value", None) == part for k, v in node.value)


def key_path(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
